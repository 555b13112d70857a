//! backend-ipvs (work in progress).
