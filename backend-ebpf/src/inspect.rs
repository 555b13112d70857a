//! `inspect()`: what the pinned maps hold, and the hooks where the kernel
//! shows none of our programs, read from the kernel (never from memory). A
//! fresh process (`switchyard inspect`) finds our programs by the pinned
//! maps they use.

use proxy_core::ProgrammedState;

use crate::{EbpfConfig, EbpfError, client, maps};

/// Runs inside the backend's namespace.
pub fn programmed_state(cfg: &EbpfConfig) -> Result<ProgrammedState, EbpfError> {
    if !cfg.maps_dir().join("swy_svc").exists() {
        return Ok(ProgrammedState::default());
    }
    let mut maps = maps::Maps::open(&cfg.maps_dir())?;
    let mut state = maps::Programmed::read(&mut maps)?.to_state();
    let ours = client::our_program_ids(cfg);
    state.unattached = client::unattached_hooks(cfg, &ours, client::use_tcx())?;
    Ok(state)
}
