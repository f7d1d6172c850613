//! The privileged helper of orchestratord: builds a box (`start`) or runs a command in one
//! (`exec`). Started by the daemon only, a fresh single-threaded process for each
//! operation; see `orchestratord::runtime::boxes::helper` for the sequence.

fn main() {
    orchestratord::runtime::boxes::helper::main()
}
