//! proxy-daemon library entry point (work in progress).
