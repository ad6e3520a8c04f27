//! The etcd backend and leader election against a real etcd (Debian's
//! `etcd-server`), started per test on free loopback ports.

use std::sync::Arc;
use std::time::Duration;

use agora_store::election::Election;
use agora_store::etcd::Etcd;
use agora_store::local_etcd::LocalEtcd;
use agora_store::{Store, StoreError, Write};
use tokio::sync::watch;

struct EtcdServer {
    local: LocalEtcd,
    _data: tempfile::TempDir,
}

async fn etcd() -> EtcdServer {
    let data = tempfile::tempdir().expect("tempdir");
    let local = LocalEtcd::start(data.path(), 1).expect("etcd (apt-get install etcd-server)");
    local
        .ready(Duration::from_secs(20))
        .await
        .expect("etcd did not start");
    EtcdServer { local, _data: data }
}

/// The store's calls block: run them off the async threads, as its users do.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_in_etcd_commit_load_and_delete() {
    let server = etcd().await;
    let url = server.local.endpoints.clone();
    blocking(move || {
        let store = Store::etcd(&url, "/agora/test", None).expect("store");
        store
            .commit(&[
                Write::put("apps", "b", b"2".to_vec()),
                Write::put("apps", "a", b"1".to_vec()),
                Write::put("appsx", "c", b"3".to_vec()),
            ])
            .expect("commit");
        store.commit(&[Write::delete("apps", "b")]).expect("delete");
        // One key written twice in a commit: the last write counts.
        store
            .commit(&[
                Write::put("twice", "k", b"first".to_vec()),
                Write::put("twice", "k", b"last".to_vec()),
            ])
            .expect("a key written twice");
        assert_eq!(
            store.get("twice", "k").expect("get"),
            Some(b"last".to_vec())
        );
        let again = Store::etcd(&url, "/agora/test", None).expect("store");
        assert_eq!(
            again.load("apps").expect("load"),
            vec![("a".to_string(), b"1".to_vec())],
            "a table is its own prefix, not a neighbour's"
        );
        assert_eq!(again.get("appsx", "c").expect("get"), Some(b"3".to_vec()));
        // More writes than one etcd transaction holds.
        let many: Vec<Write> = (0..250)
            .map(|i| Write::put("many", format!("{i:03}"), vec![1]))
            .collect();
        again.commit(&many).expect("a big commit");
        assert_eq!(again.load("many").expect("load").len(), 250);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_leader_at_a_time_and_a_deposed_leader_cannot_write() {
    let server = etcd().await;
    let etcd = Arc::new(Etcd::new(&server.local.endpoints).expect("client"));
    let ttl = Duration::from_secs(2);
    let first = Election::new(etcd.clone(), "/agora/test/leader", "http://m1", ttl);
    let second = Election::new(etcd.clone(), "/agora/test/leader", "http://m2", ttl);
    let (seen1, _) = watch::channel(None);
    let leader = first.campaign(&seen1).await;
    assert!(leader.is_valid());
    assert_eq!(
        second.leader().await.expect("leader"),
        Some("http://m1".to_string())
    );

    assert_eq!(first.members().await.expect("members"), ["http://m1"]);
    let (seen2, mut seen2_rx) = watch::channel(None);
    let standby = tokio::spawn(async move {
        let l = second.campaign(&seen2).await;
        (l, second)
    });
    seen2_rx
        .wait_for(|l| l.as_deref() == Some("http://m1"))
        .await
        .expect("the standby sees the leader");
    let mut members = first.members().await.expect("members");
    members.sort();
    assert_eq!(
        members,
        ["http://m1", "http://m2"],
        "standbys list themselves too"
    );

    let url = server.local.endpoints.clone();
    let fence = leader.clone();
    blocking(move || {
        let store = Store::etcd(&url, "/agora/test/data", Some(fence)).expect("store");
        store
            .commit(&[Write::put("t", "k", b"leader".to_vec())])
            .expect("the leader writes");
    })
    .await;

    // The lease is lost behind the leader's back (as when it freezes past
    // its TTL): its next write is refused, not applied.
    let lease_holder = etcd.get("/agora/test/leader").await.expect("get");
    assert!(lease_holder.is_some());
    leader.resign().await;
    let (new_leader, _second) = tokio::time::timeout(Duration::from_secs(5), standby)
        .await
        .expect("the standby takes over promptly")
        .expect("campaign");
    assert!(new_leader.is_valid());
    let url = server.local.endpoints.clone();
    let stale = leader.clone();
    let refused = blocking(move || {
        let store = Store::etcd(&url, "/agora/test/data", Some(stale)).expect("store");
        store.commit(&[Write::put("t", "k", b"stale".to_vec())])
    })
    .await;
    assert!(matches!(refused, Err(StoreError::Fenced(_))), "{refused:?}");
    let url = server.local.endpoints.clone();
    let value = blocking(move || {
        Store::etcd(&url, "/agora/test/data", None)
            .expect("store")
            .get("t", "k")
            .expect("get")
    })
    .await;
    assert_eq!(
        value,
        Some(b"leader".to_vec()),
        "the stale write left no trace"
    );
    // The old leader learns it too.
    tokio::time::timeout(Duration::from_secs(5), leader.lost())
        .await
        .expect("the deposed leader notices");
    assert!(!leader.is_valid());
}
