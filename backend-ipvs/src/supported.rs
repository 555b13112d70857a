//! Can this node run the ipvs mode? Checked without changing anything.

use proxy_core::DataplaneError;

use crate::MODE;
use crate::client::{ClientError, NetlinkIpvs};

/// Programs the helper rules need, looked up in `PATH`.
pub const PROGRAMS: &[&str] = &["iptables-restore", "iptables", "ipset"];

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Resolves the IPVS genl family (ENOENT: "IPVS unavailable") and looks for
/// the helper programs. Run it on a thread inside the node namespace.
pub fn probe() -> Result<(), DataplaneError> {
    match NetlinkIpvs::connect() {
        Ok(_) => {}
        Err(ClientError::Unavailable) => {
            return Err(DataplaneError::unavailable(MODE, ClientError::Unavailable.to_string()));
        }
        Err(e) => return Err(DataplaneError::failed(MODE, "probe IPVS", e)),
    }
    let missing: Vec<&str> = PROGRAMS.iter().copied().filter(|p| !in_path(p)).collect();
    if !missing.is_empty() {
        return Err(DataplaneError::unavailable(MODE, format!("missing programs: {}", missing.join(", "))));
    }
    Ok(())
}
