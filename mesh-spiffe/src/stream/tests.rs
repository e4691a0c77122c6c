//! The stream's behaviour against the fake agent over a real Unix socket.

use std::time::Duration;

use mesh_core::{IdentitySource, InvalidIdentity, identity::dev::DevCa};

use crate::{
    Backoff, FetchError, WorkloadApi, WorkloadApiError,
    testing::{FakeAgent, Reply, response, svid},
};

const WAIT: Duration = Duration::from_secs(10);

fn ca(td: &str) -> DevCa {
    DevCa::new(td.parse().unwrap()).unwrap()
}

/// A response with one fresh SVID for `path`.
fn one(ca: &DevCa, path: &str) -> Reply {
    let id = format!("spiffe://{}{path}", ca.trust_domain());
    Reply::Send(response(vec![svid(&ca.issue(path).unwrap(), &id, ca)], &[]))
}

fn api(agent: &FakeAgent) -> WorkloadApi {
    WorkloadApi::new(&agent.socket())
        .unwrap()
        .first_svid_timeout(WAIT)
        .backoff(Backoff::new(Duration::from_millis(10), Duration::from_millis(200)))
}

fn serial(source: &IdentitySource) -> String {
    source.current().credentials().serial().to_owned()
}

async fn wait_for(source: &IdentitySource, what: &str, mut condition: impl FnMut(&IdentitySource) -> bool) {
    let mut changes = source.changes();
    let waited = tokio::time::timeout(WAIT, async {
        while !condition(source) {
            changes.next().await;
        }
    })
    .await;
    assert!(waited.is_ok(), "never {what}; last error {:?}", source.last_error());
}

#[tokio::test]
async fn every_pushed_update_is_applied() {
    let ours = ca("example.org");
    let agent = FakeAgent::start(one(&ours, "/web"));
    let source = api(&agent).connect().await.unwrap();
    assert_eq!(source.current().credentials().spiffe_id().as_str(), "spiffe://example.org/web");
    assert!(source.last_error().is_none());
    for _ in 0..3 {
        let before = serial(&source);
        agent.send(one(&ours, "/web"));
        wait_for(&source, "renewed", |s| serial(s) != before).await;
    }
    assert_eq!(agent.opened(), 1, "one stream carried every update");
}

#[tokio::test]
async fn a_workload_without_an_entry_gets_a_typed_error_naming_the_socket() {
    let agent = FakeAgent::start(Reply::Deny);
    let error = api(&agent).first_svid_timeout(Duration::from_millis(500)).connect().await.unwrap_err();
    let WorkloadApiError::NoSvid { socket, last: Some(FetchError::NoIdentityIssued), .. } = &error else {
        panic!("{error}")
    };
    assert_eq!(socket, &agent.socket());
    let text = error.to_string();
    assert!(text.contains(&agent.socket()) && text.contains("no identity issued"), "{text}");
    assert!(agent.opened() == 0, "denied before any stream");
}

#[tokio::test]
async fn no_agent_at_all_is_reported_as_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let socket = format!("unix:{}", dir.path().join("nobody.sock").display());
    let error = WorkloadApi::new(&socket).unwrap().first_svid_timeout(Duration::from_millis(300)).connect().await;
    let error = error.unwrap_err();
    assert!(matches!(&error, WorkloadApiError::NoSvid { last: Some(FetchError::Unreachable(_)), .. }), "{error}");
    assert!(error.to_string().contains("nobody.sock"), "{error}");
}

#[tokio::test]
async fn an_entry_that_appears_later_is_waited_for() {
    let ours = ca("example.org");
    let agent = FakeAgent::start(Reply::Deny);
    let connecting = tokio::spawn(api(&agent).connect());
    // Denied twice (a retry after backoff), then the entry syncs to the agent.
    agent.wait_denied(2).await;
    agent.send(one(&ours, "/late"));
    let source = tokio::time::timeout(WAIT * 2, connecting).await.unwrap().unwrap().unwrap();
    assert_eq!(source.current().credentials().spiffe_id().as_str(), "spiffe://example.org/late");
}

#[tokio::test]
async fn the_agent_going_away_keeps_the_last_svid_and_reports_it_until_it_is_back() {
    let ours = ca("example.org");
    let mut agent = FakeAgent::start(one(&ours, "/web"));
    let source = api(&agent).connect().await.unwrap();
    let kept = serial(&source);

    agent.stop();
    wait_for(&source, "reported the outage", |s| s.last_error().is_some()).await;
    let error = source.last_error().unwrap();
    assert!(matches!(&*error, InvalidIdentity::WorkloadApi { socket, .. } if *socket == agent.socket()), "{error}");
    assert!(error.to_string().starts_with(&format!("SPIFFE Workload API at {}: ", agent.socket())), "{error}");
    assert_eq!(serial(&source), kept, "the last good SVID stays in use");

    // Back, with a renewed SVID: applied, and the error cleared.
    agent.send(one(&ours, "/web"));
    agent.restart();
    wait_for(&source, "renewed after the restart", |s| serial(s) != kept && s.last_error().is_none()).await;
    assert!(agent.opened() >= 2);
}

#[tokio::test]
async fn a_refused_update_keeps_the_identity_and_the_stream() {
    let (ours, stranger) = (ca("example.org"), ca("example.org"));
    let agent = FakeAgent::start(one(&ours, "/web"));
    let source = api(&agent).connect().await.unwrap();
    let kept = serial(&source);

    // An SVID the bundle does not back.
    let bad = svid(&stranger.issue("/web").unwrap(), "spiffe://example.org/web", &ours);
    agent.send(Reply::Send(response(vec![bad], &[])));
    wait_for(&source, "refused the update", |s| s.last_error().is_some()).await;
    let error = source.last_error().unwrap().to_string();
    assert!(error.contains("does not chain to the trust bundle"), "{error}");
    assert_eq!(serial(&source), kept);

    agent.send(one(&ours, "/web"));
    wait_for(&source, "took the next good update", |s| serial(s) != kept && s.last_error().is_none()).await;
    assert_eq!(agent.opened(), 1, "a refused update is no reason to reconnect");
}

#[tokio::test]
async fn the_svid_is_chosen_by_spiffe_id() {
    let ours = ca("example.org");
    let svids = |ca: &DevCa| {
        vec![
            svid(&ca.issue("/web").unwrap(), "spiffe://example.org/web", ca),
            svid(&ca.issue("/admin").unwrap(), "spiffe://example.org/admin", ca),
        ]
    };
    let agent = FakeAgent::start(Reply::Send(response(svids(&ours), &[])));
    let default = api(&agent).connect().await.unwrap();
    assert_eq!(default.current().credentials().spiffe_id().as_str(), "spiffe://example.org/web");
    let admin = api(&agent).spiffe_id("spiffe://example.org/admin".parse().unwrap()).connect().await.unwrap();
    assert_eq!(admin.current().credentials().spiffe_id().as_str(), "spiffe://example.org/admin");

    // The entry for /admin is deleted: /admin keeps its SVID and says why; the default follows.
    let kept = serial(&admin);
    let web_only = vec![svid(&ours.issue("/web").unwrap(), "spiffe://example.org/web", &ours)];
    agent.send(Reply::Send(response(web_only, &[])));
    wait_for(&admin, "refused the update without its SVID", |s| s.last_error().is_some()).await;
    assert!(admin.last_error().unwrap().to_string().contains("but not spiffe://example.org/admin"));
    assert_eq!(serial(&admin), kept);

    let wrong = api(&agent)
        .spiffe_id("spiffe://example.org/db".parse().unwrap())
        .first_svid_timeout(Duration::from_millis(300));
    let error = wrong.connect().await.unwrap_err();
    assert!(matches!(error, WorkloadApiError::NoSvid { last: Some(FetchError::NoMatchingSvid { .. }), .. }), "{error}");
}

#[tokio::test]
async fn federated_bundles_follow_the_agent() {
    let (ours, partner) = (ca("example.org"), ca("partner.org"));
    let web = |federated: &[&DevCa]| {
        Reply::Send(response(vec![svid(&ours.issue("/web").unwrap(), "spiffe://example.org/web", &ours)], federated))
    };
    let agent = FakeAgent::start(web(&[&partner]));
    let source = api(&agent).connect().await.unwrap();
    assert!(source.current().bundle().roots("partner.org").is_some());
    agent.send(web(&[]));
    wait_for(&source, "dropped the federated bundle", |s| s.current().bundle().roots("partner.org").is_none()).await;
}

#[tokio::test]
async fn dropping_the_source_ends_the_stream() {
    let ours = ca("example.org");
    let agent = FakeAgent::start(one(&ours, "/web"));
    let source = api(&agent).connect().await.unwrap();
    let clone = source.clone();
    agent.wait_open(1).await;
    drop(source);
    // A clone still lives: the stream stays and still delivers.
    let before = serial(&clone);
    agent.send(one(&ours, "/web"));
    wait_for(&clone, "renewed through the clone", |s| serial(s) != before).await;
    agent.wait_open(1).await;
    drop(clone);
    agent.wait_open(0).await;
}
