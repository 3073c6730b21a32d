//! The pure parts of the publisher: the object, the decisions and the
//! schedule (under paused time).

use super::*;

const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

#[test]
fn the_applied_object_is_a_plain_configmap_with_the_bundle_and_our_label() {
    let v = serde_json::to_value(config_map("shop", PEM)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "weft-trust-anchors",
                "namespace": "shop",
                "labels": {"app.kubernetes.io/managed-by": "weft-control"},
            },
            "data": {"ca.crt": PEM},
        })
    );
}

#[test]
fn applies_what_is_missing_edited_or_unlabelled_only() {
    let ours = config_map("shop", PEM);
    assert!(needs_apply(None, PEM));
    assert!(!needs_apply(Some(&ours), PEM));
    let mut extra = ours.clone();
    extra
        .data
        .as_mut()
        .unwrap()
        .insert("note".into(), "someone else's".into());
    extra
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("team".into(), "infra".into());
    assert!(!needs_apply(Some(&extra), PEM), "other keys are not ours");
    let mut edited = ours.clone();
    edited.data = Some([(KEY.to_string(), "tampered".to_string())].into());
    assert!(needs_apply(Some(&edited), PEM));
    let mut emptied = ours.clone();
    emptied.data = None;
    assert!(needs_apply(Some(&emptied), PEM));
    let mut unlabelled = ours;
    unlabelled.metadata.labels = None;
    assert!(needs_apply(Some(&unlabelled), PEM));
    assert!(needs_apply(Some(&config_map("shop", "an older bundle")), PEM));
}

#[test]
fn system_and_terminating_namespaces_get_none() {
    let ns = |name: &str, phase: &str| -> Namespace {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name}, "status": {"phase": phase}
        }))
        .unwrap()
    };
    assert!(wanted(&ns("shop", "Active")));
    assert!(wanted(&ns("weft-system", "Active")));
    for system in SKIPPED_NAMESPACES {
        assert!(!wanted(&ns(system, "Active")), "{system}");
    }
    assert!(!wanted(&ns("old", "Terminating")));
    let mut deleting = ns("old", "Active");
    deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-11-01T10:00:00Z".parse().unwrap(),
    ));
    assert!(!wanted(&deleting));
}

// ---------------------------------------------------------------- schedule

fn namespace(name: &str) -> Namespace {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name}, "status": {"phase": "Active"}
    }))
    .unwrap()
}

/// Both kinds listed, with `names` as the namespaces.
fn listed(names: &[&str], now: Instant) -> Schedule {
    let mut s = Schedule::new(REAPPLY_HOLDOFF);
    s.namespace(&watcher::Event::Init, now);
    for n in names {
        s.namespace(&watcher::Event::InitApply(namespace(n)), now);
    }
    s.namespace(&watcher::Event::InitDone, now);
    s.config_map(&watcher::Event::Init, PEM, now);
    s.config_map(&watcher::Event::InitDone, PEM, now);
    s
}

#[tokio::test(start_paused = true)]
async fn nothing_is_due_before_both_kinds_have_listed() {
    let now = Instant::now();
    let mut s = Schedule::new(REAPPLY_HOLDOFF);
    s.namespace(&watcher::Event::InitApply(namespace("shop")), now);
    s.namespace(&watcher::Event::InitApply(namespace("kube-system")), now);
    s.namespace(&watcher::Event::InitDone, now);
    assert_eq!(s.next(), None, "ConfigMaps not listed yet");
    assert!(s.take_due(now).is_empty());
    s.config_map(&watcher::Event::InitDone, PEM, now);
    assert_eq!(s.next(), Some(now));
    assert_eq!(s.take_due(now), ["shop"], "never kube-system");
    assert_eq!(s.next(), None, "taken off the schedule");
}

#[tokio::test(start_paused = true)]
async fn a_new_namespace_and_a_deleted_configmap_are_due_at_once() {
    let t0 = Instant::now();
    let mut s = listed(&["shop"], t0);
    assert_eq!(s.take_due(t0), ["shop"]);
    s.done("shop", Outcome::Applied, t0);

    s.namespace(&watcher::Event::Apply(namespace("billing")), t0);
    assert_eq!(s.take_due(t0), ["billing"]);
    s.done("billing", Outcome::Applied, t0);

    let t1 = t0 + Duration::from_secs(1);
    s.config_map(&watcher::Event::Delete(config_map("shop", PEM)), PEM, t1);
    assert_eq!(s.next(), Some(t1), "no hold-off for a deletion");
    assert_eq!(s.take_due(t1), ["shop"]);
}

#[tokio::test(start_paused = true)]
async fn a_changed_configmap_is_taken_back_after_the_holdoff_since_our_last_write() {
    let t0 = Instant::now();
    let mut s = listed(&["shop", "web"], t0);
    assert_eq!(s.take_due(t0), ["shop", "web"]);
    s.done("shop", Outcome::Applied, t0);
    s.done("web", Outcome::Fine, t0);

    // Our own write, seen on the watch: nothing to do.
    s.config_map(&watcher::Event::Apply(config_map("shop", PEM)), PEM, t0);
    assert_eq!(s.next(), None);

    // Another replica's bundle (or an edit) 1 s after our write: taken back
    // once the hold-off since that write is over.
    let t1 = t0 + Duration::from_secs(1);
    s.config_map(&watcher::Event::Apply(config_map("shop", "other")), PEM, t1);
    assert_eq!(s.next(), Some(t0 + REAPPLY_HOLDOFF));
    assert!(s.take_due(t1).is_empty());
    // Where this replica never wrote, at once.
    s.config_map(&watcher::Event::Apply(config_map("web", "other")), PEM, t1);
    assert_eq!(s.take_due(t1), ["web"]);
    assert_eq!(s.take_due(t0 + REAPPLY_HOLDOFF), ["shop"]);
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_from_one_second_to_five_minutes_and_reset() {
    let t0 = Instant::now();
    let mut s = listed(&["shop"], t0);
    let mut now = t0;
    let mut waits = Vec::new();
    for _ in 0..11 {
        assert_eq!(s.take_due(now), ["shop"]);
        s.done("shop", Outcome::Failed, now);
        let next = s.next().unwrap();
        waits.push((next - now).as_secs());
        now = next;
    }
    assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    assert_eq!(s.take_due(now), ["shop"]);
    s.done("shop", Outcome::Applied, now);
    assert_eq!(s.next(), None);
    s.config_map(&watcher::Event::Delete(config_map("shop", PEM)), PEM, now);
    assert_eq!(s.take_due(now), ["shop"]);
    s.done("shop", Outcome::Failed, now);
    assert_eq!(
        s.next(),
        Some(now + Duration::from_secs(1)),
        "reset by the success"
    );
}

#[tokio::test(start_paused = true)]
async fn deleted_and_terminating_namespaces_leave_the_schedule() {
    let t0 = Instant::now();
    let mut s = listed(&["shop", "old", "gone"], t0);
    assert_eq!(s.take_due(t0), ["gone", "old", "shop"]);
    for ns in ["shop", "old", "gone"] {
        s.done(ns, Outcome::Applied, t0);
    }
    s.namespace(&watcher::Event::Delete(namespace("shop")), t0);
    let mut terminating = namespace("old");
    terminating.status.as_mut().unwrap().phase = Some("Terminating".into());
    s.namespace(&watcher::Event::Apply(terminating), t0);
    for ns in ["shop", "old"] {
        s.config_map(&watcher::Event::Delete(config_map(ns, PEM)), PEM, t0);
    }
    assert_eq!(s.next(), None, "the cascade's deletions are not put back");
    // A namespace the publisher found gone when it looked.
    s.config_map(&watcher::Event::Delete(config_map("gone", PEM)), PEM, t0);
    assert_eq!(s.take_due(t0), ["gone"]);
    s.done("gone", Outcome::Gone, t0);
    s.config_map(&watcher::Event::Delete(config_map("gone", PEM)), PEM, t0);
    assert_eq!(s.next(), None);
}

#[tokio::test(start_paused = true)]
async fn a_relist_looks_at_every_namespace_again() {
    let t0 = Instant::now();
    let mut s = listed(&["shop", "web"], t0);
    assert_eq!(s.take_due(t0).len(), 2);
    s.done("shop", Outcome::Applied, t0);
    s.done("web", Outcome::Applied, t0);
    let t1 = t0 + Duration::from_secs(5);
    s.config_map(&watcher::Event::Init, PEM, t1);
    s.config_map(&watcher::Event::InitDone, PEM, t1);
    assert_eq!(s.take_due(t1), ["shop", "web"]);
}
