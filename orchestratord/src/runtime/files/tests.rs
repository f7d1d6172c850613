//! Seam tests of the file operations: a temporary home, real syscalls as root.
