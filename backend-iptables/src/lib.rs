//! backend-iptables (work in progress).
