//! Manifest parsing and conversion: any text parses into objects and
//! errors, and the objects go through the tracker (conversion, planning)
//! without a panic, as a first list, as a relist, and as single updates.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use proxy_core::{ChangeTracker, PlannerConfig, ProxyEvent, ResourceEvent, TrackerConfig};
use proxy_daemon::source::file::parse_file;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (manifests, errors) = parse_file(Path::new("fuzz/objects.yaml"), &text);
    // Every error renders (it names the file).
    for e in &errors {
        assert!(e.to_string().starts_with("fuzz/objects.yaml"));
    }
    // The node name matches the seed corpus' Node so its topology path runs.
    let mut tracker = ChangeTracker::new(TrackerConfig::new(PlannerConfig::new("node-a")));
    for ev in manifests.events() {
        tracker.apply(ev);
    }
    let batch = tracker.take_batch();
    tracker.commit(batch);
    // A relist of the same objects changes nothing.
    for ev in manifests.events() {
        tracker.apply(ev);
    }
    let batch = tracker.take_batch();
    assert!(batch.changed.is_empty(), "a relist of the same objects changed {:?}", batch.changed);
    tracker.commit(batch);
    // Single updates and deletes of each object, then an empty relist.
    for svc in manifests.services.values() {
        tracker.apply(ProxyEvent::Service(ResourceEvent::Apply(svc.clone())));
        tracker.apply(ProxyEvent::Service(ResourceEvent::Delete(svc.clone())));
    }
    for slice in manifests.slices.values() {
        tracker.apply(ProxyEvent::EndpointSlice(ResourceEvent::Delete(slice.clone())));
        tracker.apply(ProxyEvent::EndpointSlice(ResourceEvent::Apply(slice.clone())));
    }
    let _ = tracker.snapshot();
    for ev in proxy_daemon::source::file::Manifests::default().events() {
        tracker.apply(ev);
    }
    let batch = tracker.take_batch();
    tracker.commit(batch);
    assert_eq!(tracker.snapshot().len(), 0, "an empty relist leaves nothing");
});
