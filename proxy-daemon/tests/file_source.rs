//! The file source feeding a tracker: reloads are relists, malformed files
//! keep what they held, deleted files delete their objects.
#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::WEB;
use proxy_core::{ChangeTracker, PlannerConfig, ProxyEvent, TrackerConfig};
use proxy_daemon::source::EventSink;
use proxy_daemon::source::file::FileSource;

struct Fixture {
    dir: tempfile::TempDir,
    tracker: Arc<Mutex<ChangeTracker>>,
    events: Arc<Mutex<usize>>,
    source: Arc<FileSource>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let tracker = Arc::new(Mutex::new(ChangeTracker::new(TrackerConfig {
            wait_for_node: false,
            ..TrackerConfig::new(PlannerConfig::new("node-a"))
        })));
        let events = Arc::new(Mutex::new(0));
        let sink: EventSink = {
            let (t, n) = (tracker.clone(), events.clone());
            Arc::new(move |ev: ProxyEvent| {
                *n.lock().unwrap() += 1;
                t.lock().unwrap().apply(ev);
            })
        };
        let source = FileSource::new(dir.path().to_path_buf(), Duration::from_millis(50), sink);
        Fixture { dir, tracker, events, source }
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join(name), text).unwrap();
    }

    fn services(&self) -> Vec<String> {
        let snap = self.tracker.lock().unwrap().snapshot();
        snap.services().map(|p| p.name().to_string()).collect()
    }
}

fn svc(name: &str, ip: &str) -> String {
    WEB.replace("web", name).replace("10.96.0.10", ip)
}

#[test]
fn reloads_are_relists() {
    let f = Fixture::new();
    f.write("a.yaml", &svc("a", "10.96.0.1"));
    f.write("b.yml", &svc("b", "10.96.0.2"));
    f.write(".hidden.yaml", &svc("hidden", "10.96.0.3"));
    f.write("notes.txt", "not a manifest");
    let r = f.source.load();
    assert!(r.changed && r.errors.is_empty(), "{r:?}");
    assert!(f.tracker.lock().unwrap().is_synced(), "the first load completes the initial lists");
    assert_eq!(f.services(), vec!["default/a", "default/b"]);

    let before = *f.events.lock().unwrap();
    assert!(!f.source.load().changed, "unchanged files deliver nothing");
    assert_eq!(*f.events.lock().unwrap(), before);

    std::fs::remove_file(f.dir.path().join("b.yml")).unwrap();
    f.source.load();
    assert_eq!(f.services(), vec!["default/a"], "a removed file's objects are deleted");
}

#[test]
fn malformed_files_keep_what_they_held() {
    let f = Fixture::new();
    f.write("a.yaml", &format!("{}---\n{}", svc("a1", "10.96.0.1"), svc("a2", "10.96.0.2")));
    f.source.load();
    assert_eq!(f.services(), vec!["default/a1", "default/a2"]);

    // a2 disappears from the file, a3 is added, and one document is broken.
    f.write(
        "a.yaml",
        &format!(
            "{}---\n{}---\nkind: Service\napiVersion: v1\nmetadata: {{name: x}}\nspec: 7\n",
            svc("a1", "10.96.0.1"),
            svc("a3", "10.96.0.3")
        ),
    );
    let r = f.source.load();
    assert_eq!(r.errors.len(), 1);
    assert!(r.errors[0].to_string().contains("a.yaml, document 5 (Service x): spec"), "{}", r.errors[0]);
    assert_eq!(f.services(), vec!["default/a1", "default/a2", "default/a3"], "nothing lost while malformed");

    // YAML that does not parse at all.
    f.write("a.yaml", "kind: [\n");
    let r = f.source.load();
    assert!(r.errors[0].to_string().contains("not valid YAML"));
    assert_eq!(f.source.load().errors, r.errors, "an unchanged malformed file is still reported");
    assert_eq!(f.services(), vec!["default/a1", "default/a2", "default/a3"]);

    // Fixed: the file's content is the truth again.
    f.write("a.yaml", &svc("a1", "10.96.0.1"));
    let r = f.source.load();
    assert!(r.errors.is_empty());
    assert_eq!(f.services(), vec!["default/a1"]);
}

#[test]
fn a_vanished_path_keeps_everything() {
    let f = Fixture::new();
    f.write("a.yaml", &svc("a", "10.96.0.1"));
    f.source.load();
    let path = f.dir.path().to_path_buf();
    let moved = path.with_extension("moved");
    std::fs::rename(&path, &moved).unwrap();
    let r = f.source.load();
    assert_eq!(r.errors.len(), 1);
    assert_eq!(f.services(), vec!["default/a"]);
    std::fs::rename(&moved, &path).unwrap();
}

#[tokio::test]
async fn the_poll_loop_picks_up_changes_and_answers_reload_requests() {
    let f = Fixture::new();
    f.write("a.yaml", &svc("a", "10.96.0.1"));
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(f.source.clone().run(rx, async move {
        let _ = stop_rx.await;
    }));
    // A reload request is answered after the events were delivered.
    f.write("b.yaml", &svc("b", "10.96.0.2"));
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    tx.send(reply_tx).await.unwrap();
    let report = reply_rx.await.unwrap();
    assert_eq!(report.services, 2);
    assert_eq!(f.services(), vec!["default/a", "default/b"]);
    // Polling alone picks up a change too.
    f.write("c.yaml", &svc("c", "10.96.0.3"));
    common::eventually("poll picks up c.yaml", || {
        let s = f.services();
        async move { s.len() == 3 }
    })
    .await;
    let _ = stop_tx.send(());
    task.await.unwrap();
}
