//! `Proxier::converged` is a sync barrier: true only when every accepted change is programmed.

use std::sync::Arc;
use std::time::Duration;

use proxy_core::health::ProxyHealth;
use proxy_core::testing::{RecordingDataplane, ServiceBuilder, initial_list};
use proxy_core::{ChangeTracker, PlannerConfig, Proxier, ProxyEvent, ResourceEvent, SyncTrigger, TrackerConfig};

#[tokio::test]
async fn converged_tracks_pending_and_failed_syncs() {
    let dp = Arc::new(RecordingDataplane::new());
    let tracker = ChangeTracker::new(TrackerConfig::new(PlannerConfig::new("node-a")));
    let proxier =
        Proxier::new(tracker, dp.clone(), ProxyHealth::new(Duration::from_secs(60)), None, SyncTrigger::default());
    assert!(!proxier.converged(), "initial lists incomplete");
    for ev in initial_list(vec![], vec![], None) {
        proxier.handle(ev);
    }
    assert!(proxier.converged(), "nothing to program");
    let svc = ServiceBuilder::new("default", "web", "10.96.0.10").port("http", 80, "TCP").build();
    proxier.handle(ProxyEvent::Service(ResourceEvent::Apply(svc)));
    assert!(!proxier.converged(), "a change is pending");
    dp.fail_next(1);
    proxier.sync_once(false).await;
    assert!(!proxier.converged(), "a failed sync leaves the change pending");
    proxier.sync_once(false).await;
    assert!(proxier.converged());
}
