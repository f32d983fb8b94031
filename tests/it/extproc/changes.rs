//! Changes through the admin API reach the next request, on this replica and on others.

use super::*;
use crate::support::backend_tests;

backend_tests!(changes_take_effect_on_the_next_request,);

async fn changes_take_effect_on_the_next_request(gw: Gateway) {
    gw.secret("openai-api-key", VALUE, 300).await;
    let mut client = gw.client().await;
    let request = get("api.openai.com", "/v1/models");
    assert_eq!(call(&mut client, WORKER, &request).await, unchanged());
    let id = gw.rule("worker", seed_rule()).await;
    assert_eq!(
        call(&mut client, WORKER, &request).await,
        set("authorization", &format!("Bearer {VALUE}"))
    );
    // A new value replaces the cached one at once.
    let (status, _) = gw
        .api(
            reqwest::Method::PUT,
            "/v1/secrets/openai-api-key",
            Some(json!({"value": "sk-test-rotated"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        call(&mut client, WORKER, &request).await,
        set("authorization", "Bearer sk-test-rotated")
    );
    let (status, _) = gw
        .api(reqwest::Method::DELETE, &format!("/v1/rules/{id}"), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(call(&mut client, WORKER, &request).await, unchanged());
    // A batch takes effect too.
    let (status, _) = gw
        .api(
            reqwest::Method::POST,
            "/v1/rules/batch",
            Some(json!({"rules": [{"runtime": "worker", "host": "*.openai.com", "credential": "openai-api-key", "inject": {"header": "x-key"}}]})),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        call(&mut client, WORKER, &request).await,
        set("x-key", "sk-test-rotated")
    );
    gw.stop().await;
}

/// Two replicas on one PostgreSQL database: a change made through one reaches the other's
/// snapshot and secret cache through LISTEN/NOTIFY, not a periodic reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_each_other() {
    let Some(first) = Gateway::start_with(Backend::Postgres, |c| {
        c.injection.reload_interval_secs = 3600
    })
    .await
    else {
        return;
    };
    let second = first.replica().await;
    let mut client = second.client().await;
    let request = get("api.openai.com", "/v1/models");
    assert_eq!(call(&mut client, WORKER, &request).await, unchanged());

    async fn eventually(
        client: &mut ExternalProcessorClient<Channel>,
        request: &[(String, String)],
        want: &Outcome,
    ) -> bool {
        for _ in 0..100 {
            if call(client, WORKER, request).await == *want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
    first.secret("openai-api-key", VALUE, 3600).await;
    first.rule("worker", seed_rule()).await;
    let want = set("authorization", &format!("Bearer {VALUE}"));
    assert!(
        eventually(&mut client, &request, &want).await,
        "the rule never reached the other replica"
    );
    // The value is now cached there for an hour; an update through the first replica drops it.
    let (status, _) = first
        .api(
            reqwest::Method::PUT,
            "/v1/secrets/openai-api-key",
            Some(json!({"value": "sk-test-replicated"})),
        )
        .await;
    assert_eq!(status, 200);
    let want = set("authorization", "Bearer sk-test-replicated");
    assert!(
        eventually(&mut client, &request, &want).await,
        "the other replica kept serving the old value"
    );
    // A runtime token made through the first replica identifies on the second (an identities
    // change, which keeps the second's rule index), and its revocation reaches it too.
    let (status, created) = first
        .api(reqwest::Method::POST, "/v1/runtimes/worker/tokens", None)
        .await;
    assert_eq!(status, 201);
    let mut with_token = get("api.openai.com", "/v1/models");
    with_token.push((
        "proxy-authorization".into(),
        format!("Bearer {}", created["token"].as_str().unwrap()),
    ));
    let rules_before = second.running.as_ref().unwrap().engine.snapshot();
    let mut injected = false;
    for _ in 0..100 {
        if let Outcome::Continue(m) = call(&mut client, EDGE, &with_token).await
            && m.set
                == [(
                    "authorization".to_owned(),
                    "Bearer sk-test-replicated".to_owned(),
                )]
        {
            injected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(injected, "the token never identified on the other replica");
    assert!(
        second
            .running
            .as_ref()
            .unwrap()
            .engine
            .snapshot()
            .shares_rules_with(&rules_before),
        "a token change rebuilt the other replica's rules"
    );
    let id = created["id"].as_str().unwrap();
    let (status, _) = first
        .api(
            reqwest::Method::DELETE,
            &format!("/v1/runtime-tokens/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let mut refused = false;
    for _ in 0..100 {
        if let Outcome::Immediate { status: 407, .. } = call(&mut client, EDGE, &with_token).await {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "the revocation never reached the other replica");
    second.stop().await;
    first.stop().await;
}
