//! `meshbench`: the load harness (its scenarios arrive with the harness itself).

fn main() {}
