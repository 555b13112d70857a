//! The backend's error type.

use proxy_core::DataplaneError;

use crate::MODE;
use crate::client::ClientError;
use crate::{link, rules};

/// Errors of the IPVS backend.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Link(#[from] link::LinkError),
    #[error(transparent)]
    Rules(#[from] rules::RulesError),
    #[error("sysctl {name}")]
    Sysctl {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {netns}")]
    Netns {
        netns: String,
        #[source]
        source: std::io::Error,
    },
}

impl IpvsError {
    pub(crate) fn into_dataplane(self, operation: &str) -> DataplaneError {
        match self {
            IpvsError::Client(ClientError::Unavailable) => {
                DataplaneError::unavailable(MODE, ClientError::Unavailable.to_string())
            }
            e => DataplaneError::failed(MODE, operation, e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use proxy_core::testing::assert_each_cause_once;

    use super::*;
    use crate::message::MessageError;

    /// Every error of the backend names each cause once when its chain is
    /// printed (the edge prints `ErrorChain`: message, then each source).
    #[test]
    fn each_cause_is_printed_once() {
        let io = || io::Error::from_raw_os_error(libc::EPERM);
        let client = |operation: &str| ClientError::Io { operation: operation.into(), source: io() };
        let errors: Vec<IpvsError> = vec![
            IpvsError::Sysctl { name: "net.ipv4.vs.conntrack".into(), source: io() },
            IpvsError::Netns { netns: "/run/netns/x".into(), source: io() },
            IpvsError::Client(client("open IPVS socket")),
            IpvsError::Client(ClientError::Message {
                operation: "dump services".into(),
                source: MessageError::Parse("short".into()),
            }),
            IpvsError::Client(ClientError::Batch { failed: 2, total: 5, first: Box::new(client("NEW_SERVICE")) }),
            IpvsError::Link(link::LinkError::Io { operation: "ip link add switchyard0".into(), source: io() }),
            IpvsError::Rules(rules::RulesError::Spawn { command: "ipset restore".into(), source: io() }),
        ];
        for e in &errors {
            assert_each_cause_once(e);
            let text = proxy_core::ErrorChain(e).to_string();
            assert!(text.contains("Operation not permitted") || text.contains("short"), "{text}");
        }
        let batch = proxy_core::ErrorChain(&errors[4]).to_string();
        assert_eq!(
            batch,
            "2 of 5 IPVS operations failed, the first: NEW_SERVICE: Operation not permitted (os error 1)"
        );
    }
}
