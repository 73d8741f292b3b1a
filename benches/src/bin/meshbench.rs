//! `meshbench <scenario> [--quick]`: runs one load scenario against meshlib and prints its
//! figures as JSON lines. (A stub until the harness lands.)

fn main() {}
