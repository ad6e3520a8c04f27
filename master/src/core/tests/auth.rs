//! Principals and ACLs in the core: who may join as an agent, register a
//! framework in a role, take a framework back, call for it, and run tasks
//! as which user.

use super::*;

const AUTH: &str = r#"
    [[principals]]
    name = "batch"
    token = "batch-token-0123456789"

    [[principals]]
    name = "web"
    token = "web-token-0123456789"

    [acls]
    register_frameworks = [{ principals = ["batch"], roles = ["batch"] },
                           { principals = ["web"], roles = ["web"] }]
    run_tasks = [{ principals = "any", users = ["nobody"] }]
    announce_webui = [{ principals = ["batch"], names = ["batch"] }]
"#;

fn principal(h: &Harness, name: &str) -> Caller {
    let token = format!("{name}-token-0123456789");
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        axum::http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    let caller = h
        .core
        .config
        .auth
        .policy()
        .authenticate(&headers)
        .expect("a known token");
    assert!(matches!(&caller, Caller::Principal(p) if p.as_str() == name));
    caller
}

#[tokio::test(start_paused = true)]
async fn a_new_agent_needs_a_join_credential_and_a_known_one_only_its_secret() {
    let mut h = Harness::with_auth(AUTH);
    h.may_join = false;
    let (_, mut rx) = h.register(1, None, "", Vec::new());
    let refused = drain(&mut rx);
    assert!(
        matches!(refused.as_slice(), [Err(s)] if s.code() == tonic::Code::Unauthenticated),
        "no join credential, no admission: {refused:?}"
    );
    // A fake agent naming a real agent's id is no better off.
    h.may_join = true;
    let agent = h.admit(2);
    h.may_join = false;
    let (_, mut rx) = h.register(3, Some(&agent.id), "", Vec::new());
    assert!(registered(&mut rx).is_none());
    // The real agent re-registers with its secret alone.
    h.reregister(&agent, 4, Vec::new());
}

#[tokio::test(start_paused = true)]
async fn frameworks_register_only_in_their_roles_and_belong_to_their_principal() {
    let mut h = Harness::with_auth(AUTH);
    let _agent = h.admit(1);
    h.caller = principal(&h, "web");
    let refused = h
        .try_subscribe("web", "batch", 3600.0, None)
        .expect_err("web may not use the batch role");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused.message().contains("role `batch`"),
        "{}",
        refused.message()
    );

    h.caller = principal(&h, "batch");
    let mut batch = h.subscribe("batch", "batch", 3600.0, None);
    assert_eq!(
        h.core
            .frameworks
            .get(&batch.id)
            .expect("known")
            .info
            .principal,
        "batch"
    );

    // Another principal holding the id and secret (leaked) still cannot take
    // it over, nor call for it.
    h.caller = principal(&h, "web");
    let takeover = h
        .try_subscribe("batch", "web", 3600.0, Some((&batch.id, &batch.secret)))
        .expect_err("not web's framework");
    assert_eq!(takeover.code(), tonic::Code::PermissionDenied);
    let offer = offers(&mut batch.rx).pop().expect("an offer");
    let call = h
        .call(
            &batch,
            accept(&offer, vec![task_info("t1", "cpus:1;mem:64")]),
        )
        .expect_err("web calling for batch's framework");
    assert_eq!(call.code(), tonic::Code::PermissionDenied);

    // A principal claiming another's name in framework_info is refused.
    h.caller = principal(&h, "web");
    let (tx, _rx) = Outbound::channel(16);
    let (reply, mut answer) = oneshot::channel();
    h.send(CoreMsg::Subscribe {
        info: Box::new(v1::FrameworkInfo {
            name: "web".into(),
            role: "web".into(),
            principal: "batch".into(),
            ..Default::default()
        }),
        secret: String::new(),
        demand: None,
        caller: h.caller.clone(),
        tx,
        reply,
    });
    let claimed = answer
        .try_recv()
        .expect("reply")
        .expect_err("not its principal");
    assert_eq!(claimed.code(), tonic::Code::PermissionDenied);
}

#[tokio::test(start_paused = true)]
async fn a_task_runs_as_root_only_where_the_acls_allow_it() {
    let mut h = Harness::with_auth(AUTH);
    let mut agent = h.admit(1);
    h.caller = principal(&h, "batch");
    let mut batch = h.subscribe("batch", "batch", 3600.0, None);
    let offer = offers(&mut batch.rx).pop().expect("an offer");
    let mut as_root = task_info("t1", "cpus:1;mem:64");
    as_root.user = "root".into();
    let refused = h
        .call(&batch, accept(&offer, vec![as_root]))
        .expect_err("root is not allowed");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let refusal = refusal_of(&refused).expect("a typed refusal");
    assert_eq!(refusal.reason(), v1::accept_refusal::Reason::NotAuthorized);
    assert_eq!(refusal.task_id, "t1");
    assert!(
        refusal.message.contains("user `root`"),
        "{}",
        refusal.message
    );
    assert!(agent_kinds(&mut agent.rx).is_empty(), "nothing launched");

    // As `nobody`, and with no user at all (the agent's default), it runs.
    h.advance(Duration::from_secs(6)).await;
    let offer = offers(&mut batch.rx).pop().expect("the offer again");
    let mut as_nobody = task_info("t2", "cpus:1;mem:64");
    as_nobody.user = "nobody".into();
    h.call(
        &batch,
        accept(&offer, vec![as_nobody, task_info("t3", "cpus:1;mem:64")]),
    )
    .expect("allowed");
    assert_eq!(agent_kinds(&mut agent.rx), ["launch:t2,t3"]);
}

#[tokio::test(start_paused = true)]
async fn only_an_allowed_principal_announces_a_web_ui_under_a_name() {
    let mut h = Harness::with_auth(AUTH);
    h.caller = principal(&h, "web");
    let (tx, _rx) = Outbound::channel(16);
    let (reply, mut answer) = oneshot::channel();
    h.send(CoreMsg::Subscribe {
        info: Box::new(v1::FrameworkInfo {
            name: "batch".into(),
            role: "web".into(),
            webui_url: "http://127.0.0.1:9/".into(),
            ..Default::default()
        }),
        secret: String::new(),
        demand: None,
        caller: h.caller.clone(),
        tx,
        reply,
    });
    let squatted = answer
        .try_recv()
        .expect("reply")
        .expect_err("web is not batch");
    assert_eq!(squatted.code(), tonic::Code::PermissionDenied);
    assert!(
        squatted.message().contains("webui_url"),
        "{}",
        squatted.message()
    );
}
