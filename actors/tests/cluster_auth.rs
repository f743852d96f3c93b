//! Logging in to NATS (feature `nats`): a server with an authorization config
//! (users with passwords, an NKey user; a token server; a TLS server that
//! verifies clients; a server in operator mode, whose JWTs the test signs)
//! lets the right credentials in, where a worker serves a session end to end,
//! and refuses the others within seconds with an error naming authorization
//! (or TLS) that shows no secret.
//!
//! Each test starts its own `nats-server -js` (see `tests/support/nats.rs`);
//! certificates are made at test time (rcgen). Timeouts only turn a hang into
//! a failure, except the bound on how long a refusal may take.

mod cluster_common;
#[path = "../../tests/support/nats.rs"]
mod nats;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cluster_common::*;
use colloquy::Secret;
use colloquy_actors::bus::TurnEnd;
use colloquy_actors::cluster::{
    ClusterClient, ClusterError, ConnectFailure, NatsOptions, SessionSpec, connect, connect_with,
};
use nats::NatsServer;

const WORKER_PASSWORD: &str = "pw-worker-5ecret";
const FRONTEND_PASSWORD: &str = "pw-frontend-5ecret";
const TOKEN: &str = "tok-5ecret-value";
/// A refused login must be told within this (it is answered at once; the
/// bound is generous for a loaded machine, far below a retry loop).
const REFUSED_WITHIN: Duration = Duration::from_secs(5);

/// Users with passwords and one NKey user; returns the server and the NKey
/// user's seed.
async fn users_server() -> Option<(NatsServer, String)> {
    let key = nkeys::KeyPair::new_user();
    let config = format!(
        "authorization {{\n  users = [\n    {{ user: worker, password: \"{WORKER_PASSWORD}\" }}\n    \
         {{ user: frontend, password: \"{FRONTEND_PASSWORD}\" }}\n    {{ nkey: {} }}\n  ]\n}}\n",
        key.public_key()
    );
    let server = NatsServer::start_with_config(Some(&config)).await?;
    Some((server, key.seed().expect("a seed")))
}

/// Connects, with the time it took to fail.
async fn refused(url: &str, options: &NatsOptions) -> (ClusterError, Duration) {
    let started = Instant::now();
    let result = tokio::time::timeout(GUARD, connect_with(url, "refused", options))
        .await
        .expect("connect returned");
    (result.expect_err("connect refused"), started.elapsed())
}

/// Places a session through `client` and has one turn answered by a worker.
async fn one_turn(client: &ClusterClient, id: &str) {
    let session = client
        .place(id, SessionSpec::default())
        .await
        .expect("placed");
    let mut events = session.subscribe().await.expect("subscribed");
    let (_, end, text, _) = turn(&session, &mut events, "hello").await;
    assert_eq!(end, TurnEnd::Stop);
    assert_eq!(text, "Answer to hello.");
}

fn assert_no_secret(text: &str) {
    for secret in [WORKER_PASSWORD, FRONTEND_PASSWORD, TOKEN, "pw-wrong"] {
        assert!(!text.contains(secret), "a secret shown: {text}");
    }
}

#[tokio::test]
async fn users_and_an_nkey_get_in_and_serve_a_session() {
    let Some((server, seed)) = users_server().await else {
        return;
    };
    let model = model().await;
    let login = NatsOptions::new().with_user_password("worker", Secret::new(WORKER_PASSWORD));
    assert_no_secret(&format!("{login:?}"));
    let nats = connect_with(&server.url(), "w1", &login)
        .await
        .expect("the worker's login is accepted");
    let _worker = worker_on(nats, &model, "w1", 10, NO_FAILOVER).await;
    // The frontend with its own password, places and talks to a session.
    let frontend =
        NatsOptions::new().with_user_password("frontend", Secret::new(FRONTEND_PASSWORD));
    let nats = connect_with(&server.url(), "frontend", &frontend)
        .await
        .expect("the frontend's login is accepted");
    one_turn(&ClusterClient::new(nats), "auth-users").await;
    // The NKey user too (its seed signs the server's nonce).
    let nkey = NatsOptions::new().with_nkey_seed(Secret::new(seed.clone()));
    assert!(!format!("{nkey:?}").contains(&seed));
    let nats = connect_with(&server.url(), "nkey-client", &nkey)
        .await
        .expect("the NKey user is accepted");
    one_turn(&ClusterClient::new(nats), "auth-nkey").await;
    // A password in the URL works as well.
    let url = format!(
        "nats://frontend:{FRONTEND_PASSWORD}@127.0.0.1:{}",
        server.port
    );
    let nats = connect(&url, "url-login").await.expect("URL login");
    one_turn(&ClusterClient::new(nats), "auth-url").await;
}

#[tokio::test]
async fn no_credentials_or_a_wrong_password_fail_within_seconds_naming_authorization() {
    let Some((server, _seed)) = users_server().await else {
        return;
    };
    let wrong = NatsOptions::new().with_user_password("worker", Secret::new("pw-wrong"));
    let unknown_nkey =
        NatsOptions::new().with_nkey_seed(Secret::new(nkeys::KeyPair::new_user().seed().unwrap()));
    let wrong_in_url = format!("nats://worker:pw-wrong@127.0.0.1:{}", server.port);
    for (url, options, what) in [
        (server.url(), NatsOptions::new(), "no credentials"),
        (server.url(), wrong, "a wrong password"),
        (server.url(), unknown_nkey, "an unknown NKey"),
        (
            wrong_in_url,
            NatsOptions::new(),
            "a wrong password in the URL",
        ),
    ] {
        let (err, took) = refused(&url, &options).await;
        assert!(took < REFUSED_WITHIN, "{what}: refused after {took:?}");
        assert!(
            matches!(
                err,
                ClusterError::Connect {
                    failure: ConnectFailure::Authorization,
                    ..
                }
            ),
            "{what}: {err:?}"
        );
        let shown = format!("{err} {err:?}");
        assert!(shown.contains("authorization"), "{what}: {shown}");
        assert_no_secret(&shown);
    }
}

#[tokio::test]
async fn a_token_server_takes_its_token_only() {
    let config = format!("authorization {{ token: \"{TOKEN}\" }}\n");
    let Some(server) = NatsServer::start_with_config(Some(&config)).await else {
        return;
    };
    let model = model().await;
    let token = NatsOptions::new().with_token(Secret::new(TOKEN));
    assert_no_secret(&format!("{token:?}"));
    let nats = connect_with(&server.url(), "w1", &token)
        .await
        .expect("the token is accepted");
    let _worker = worker_on(nats, &model, "w1", 10, NO_FAILOVER).await;
    let nats = connect(&format!("nats://{TOKEN}@127.0.0.1:{}", server.port), "c")
        .await
        .expect("a token in the URL is accepted");
    one_turn(&ClusterClient::new(nats), "auth-token").await;
    let (err, took) = refused(
        &server.url(),
        &NatsOptions::new().with_token(Secret::new("pw-wrong")),
    )
    .await;
    assert!(took < REFUSED_WITHIN, "refused after {took:?}");
    assert!(err.to_string().contains("authorization"), "{err}");
    assert_no_secret(&format!("{err} {err:?}"));
    // TLS required, and this server has none.
    let (err, took) = refused(&server.url(), &token.clone().with_tls_required(true)).await;
    assert!(took < REFUSED_WITHIN, "refused after {took:?}");
    assert!(
        matches!(
            err,
            ClusterError::Connect {
                failure: ConnectFailure::Tls,
                ..
            }
        ),
        "{err:?}"
    );
}

/// PEM files of a test CA, a server certificate for 127.0.0.1 and a client
/// certificate, in a directory removed when dropped.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let dir = std::env::temp_dir().join(format!("colloquy-pki-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("pki dir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.distinguished_name
            .push(DnType::CommonName, "colloquy test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, name: &str| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(names).expect("params");
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer).expect("certificate");
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("written");
            std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem())
                .expect("written");
        };
        leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "server",
        );
        leaf(vec![], ExtendedKeyUsagePurpose::ClientAuth, "client");
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("written");
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn tls_with_a_ca_and_a_client_certificate() {
    let pki = Pki::new();
    let config = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
        pki.path("server.pem").display(),
        pki.path("server-key.pem").display(),
        pki.path("ca.pem").display(),
    );
    let Some(server) = NatsServer::start_with_config(Some(&config)).await else {
        return;
    };
    let model = model().await;
    let tls = NatsOptions::new()
        .with_ca(pki.path("ca.pem"))
        .with_client_cert(pki.path("client.pem"), pki.path("client-key.pem"))
        .with_tls_required(true);
    let nats = connect_with(&server.url(), "w1", &tls)
        .await
        .expect("TLS with the CA and a client certificate");
    let _worker = worker_on(nats, &model, "w1", 10, NO_FAILOVER).await;
    let nats = connect_with(&server.url(), "client", &tls)
        .await
        .expect("TLS client");
    one_turn(&ClusterClient::new(nats), "auth-tls").await;
    // The system roots do not know the test CA.
    let (err, took) = refused(&server.url(), &NatsOptions::new()).await;
    assert!(took < REFUSED_WITHIN, "refused after {took:?}");
    assert!(
        matches!(
            err,
            ClusterError::Connect {
                failure: ConnectFailure::Tls,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("TLS"), "{err}");
    // The CA but no client certificate: the server refuses the handshake.
    let (err, took) = refused(
        &server.url(),
        &NatsOptions::new().with_ca(pki.path("ca.pem")),
    )
    .await;
    assert!(took < REFUSED_WITHIN, "refused after {took:?}");
    assert!(
        matches!(
            err,
            ClusterError::Connect {
                failure: ConnectFailure::Tls,
                ..
            }
        ),
        "{err:?}"
    );
}

/// A JWT of `claims` signed by `signer` (the nats `ed25519-nkey` kind).
fn jwt(mut claims: serde_json::Value, signer: &nkeys::KeyPair) -> String {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    claims["iss"] = signer.public_key().into();
    claims["iat"] = 1_700_000_000.into();
    claims["jti"] = format!("test-{}", claims["sub"]).into();
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let input = format!("{header}.{}", b64(claims.to_string().as_bytes()));
    let signature = signer.sign(input.as_bytes()).expect("signed");
    format!("{input}.{}", b64(&signature))
}

/// A server in operator (JWT) mode with one account, and a user of it: the
/// user's JWT and seed.
async fn operator_server() -> Option<(NatsServer, String, String)> {
    use serde_json::json;
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    // JetStream needs a system account.
    let system = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let no_limit = json!({"subs": -1, "data": -1, "payload": -1, "imports": -1,
        "exports": -1, "wildcards": true, "conn": -1, "leaf": -1});
    // The account's JetStream (the worker's leases and checkpoints), unlimited.
    let mut with_jetstream = no_limit.clone();
    for limit in ["mem_storage", "disk_storage", "streams", "consumer"] {
        with_jetstream[limit] = (-1).into();
    }
    let operator_jwt = jwt(
        json!({"sub": operator.public_key(), "name": "test-operator",
            "nats": {"type": "operator", "version": 2}}),
        &operator,
    );
    let account_jwt = jwt(
        json!({"sub": account.public_key(), "name": "test-account",
            "nats": {"type": "account", "version": 2, "limits": with_jetstream}}),
        &operator,
    );
    let system_jwt = jwt(
        json!({"sub": system.public_key(), "name": "SYS",
            "nats": {"type": "account", "version": 2, "limits": no_limit}}),
        &operator,
    );
    let user_jwt = jwt(
        json!({"sub": user.public_key(), "name": "test-user",
            "nats": {"type": "user", "version": 2, "pub": {}, "sub": {},
                "subs": -1, "data": -1, "payload": -1}}),
        &account,
    );
    let config = format!(
        "operator: {operator_jwt}\nsystem_account: {system}\nresolver: MEMORY\n\
         resolver_preload: {{\n  {account}: {account_jwt}\n  {system}: {system_jwt}\n}}\n",
        account = account.public_key(),
        system = system.public_key(),
    );
    let server = NatsServer::start_with_config(Some(&config)).await?;
    Some((server, user_jwt, user.seed().expect("a seed")))
}

#[tokio::test]
async fn a_worker_with_a_creds_file_serves_a_jwt_client_in_operator_mode() {
    let Some((server, user_jwt, seed)) = operator_server().await else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("colloquy-creds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let creds = dir.join("user.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    )
    .expect("written");
    let nats = connect_with(
        &server.url(),
        "creds",
        &NatsOptions::new().with_creds_file(&creds),
    )
    .await
    .expect("the creds file logs in");
    let model = model().await;
    let _worker = worker_on(nats, &model, "w1", 10, NO_FAILOVER).await;
    let jwt_login =
        NatsOptions::new().with_jwt(Secret::new(user_jwt.clone()), Secret::new(seed.clone()));
    let shown = format!("{jwt_login:?}");
    assert!(
        !shown.contains(&seed) && !shown.contains(&user_jwt),
        "{shown}"
    );
    let nats = connect_with(&server.url(), "jwt", &jwt_login)
        .await
        .expect("the JWT logs in");
    one_turn(&ClusterClient::new(nats), "auth-jwt").await;
    // A seed that does not match the JWT is refused.
    let other = nkeys::KeyPair::new_user().seed().unwrap();
    let (err, took) = refused(
        &server.url(),
        &NatsOptions::new().with_jwt(Secret::new(user_jwt), Secret::new(other)),
    )
    .await;
    assert!(took < REFUSED_WITHIN, "refused after {took:?}");
    assert!(
        matches!(
            err,
            ClusterError::Connect {
                failure: ConnectFailure::Authorization,
                ..
            }
        ),
        "{err:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
