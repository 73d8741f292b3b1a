//! The meshlib load harness; its scenarios land with the harness work.

fn main() {}
