//! Authentication and rights against real rdkafka clients: SASL_SSL with SCRAM-SHA-512,
//! PLAIN and SCRAM-SHA-256 over SASL_PLAINTEXT, a wrong password, a client that skips
//! authentication, and topic and group rights.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{
    ApiVersionsRequest, MetadataRequest, SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Message};
use steadfast_server::users::{Rights, User, UsersFile};
use steadfast_server::{ListenerConfig, SecurityProtocol, Server, ServerHandle, TlsConfig};
use steadfast_testkit::{delivered_ok, logged_producer, send_record, unique_topic, RawClient};

const ALICE_PASSWORD: &str = "alice-correct-horse";
const ADMIN_PASSWORD: &str = "admin-battery-staple";

/// A CA and a server certificate for 127.0.0.1 and localhost, as PEM files.
struct Pki {
    ca: PathBuf,
    certificate: PathBuf,
    key: PathBuf,
    /// A client certificate for `alice`, signed by the same CA.
    client_certificate: PathBuf,
    client_key: PathBuf,
}

fn make_pki(dir: &Path) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "steadfast test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let server_cert = params.signed_by(&server_key, &issuer).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut client_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "alice");
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();
    let pki = Pki {
        ca: dir.join("ca.pem"),
        certificate: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_certificate: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    };
    std::fs::write(&pki.ca, ca_cert.pem()).unwrap();
    std::fs::write(&pki.certificate, server_cert.pem()).unwrap();
    std::fs::write(&pki.key, server_key.serialize_pem()).unwrap();
    std::fs::write(&pki.client_certificate, client_cert.pem()).unwrap();
    std::fs::write(&pki.client_key, client_key.serialize_pem()).unwrap();
    pki
}

/// alice: topics `orders.*` (read, write, create) and groups `billing-*`; admin: everything.
fn write_users(path: &Path) {
    let mut file = UsersFile::default();
    let alice = Rights {
        read_topics: vec!["orders.".into()],
        write_topics: vec!["orders.".into()],
        create_topics: vec!["orders.".into()],
        groups: vec!["billing-".into()],
        ..Rights::default()
    };
    file.users.insert(
        "alice".into(),
        User::with_password(ALICE_PASSWORD, alice).unwrap(),
    );
    file.users.insert(
        "admin".into(),
        User::with_password(ADMIN_PASSWORD, Rights::everything()).unwrap(),
    );
    file.save(path).unwrap();
}

struct Setup {
    _dir: tempfile::TempDir,
    pki: Pki,
    server: ServerHandle,
}

impl Setup {
    /// The SASL_SSL listener's bootstrap address (the main one).
    fn sasl_ssl(&self) -> String {
        self.server.bootstrap_servers()
    }

    /// The SASL_PLAINTEXT listener.
    fn sasl_plaintext(&self) -> SocketAddr {
        self.server.listeners()[1].1
    }
}

async fn start() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let users = dir.path().join("users.toml");
    write_users(&users);
    let server = Server::builder()
        .listen("127.0.0.1:0")
        .data_dir(dir.path().join("data"))
        .security_protocol(SecurityProtocol::SaslSsl)
        .listener(ListenerConfig {
            protocol: SecurityProtocol::SaslPlaintext,
            addr: "127.0.0.1:0".parse().unwrap(),
            advertised: None,
        })
        .tls(TlsConfig {
            certificate: pki.certificate.clone(),
            key: pki.key.clone(),
            client_ca: None,
        })
        .users_file(&users)
        .start()
        .await
        .expect("server starts");
    Setup {
        _dir: dir,
        pki,
        server,
    }
}

/// What the blocking part of a test needs of its server.
struct Endpoints {
    /// The SASL_SSL listener's bootstrap address.
    sasl_ssl: String,
    /// The SASL_PLAINTEXT listener.
    sasl_plaintext: SocketAddr,
    /// The CA that signed the server's certificate.
    ca: PathBuf,
}

/// Starts a server, runs `body` (blocking rdkafka calls) on the blocking pool, then shuts
/// the server down.
async fn with_server(body: impl FnOnce(Endpoints) + Send + 'static) {
    let setup = start().await;
    let endpoints = Endpoints {
        sasl_ssl: setup.sasl_ssl(),
        sasl_plaintext: setup.sasl_plaintext(),
        ca: setup.pki.ca.clone(),
    };
    tokio::task::spawn_blocking(move || body(endpoints))
        .await
        .unwrap();
    setup.server.shutdown().await;
}

fn sasl_ssl_settings<'a>(
    ca: &'a Path,
    user: &'a str,
    password: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanisms", "SCRAM-SHA-512"),
        ("sasl.username", user),
        ("sasl.password", password),
        ("ssl.ca.location", ca.to_str().unwrap()),
    ]
}

/// Errors librdkafka reports outside any call (authentication failures among them).
#[derive(Default)]
struct ErrorLog(Mutex<Vec<(RDKafkaErrorCode, String)>>);

impl ClientContext for ErrorLog {
    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(code) = error.rdkafka_error_code() {
            self.0.lock().unwrap().push((code, reason.to_owned()));
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ErrorLog {}

fn consumer(bootstrap: &str, settings: &[(&str, &str)], group: &str) -> BaseConsumer<ErrorLog> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("fetch.wait.max.ms", "100");
    for (k, v) in settings {
        config.set(*k, *v);
    }
    config.create_with_context(ErrorLog::default()).unwrap()
}

fn produce(bootstrap: &str, settings: &[(&str, &str)], topic: &str, count: usize) {
    let producer = logged_producer(bootstrap, settings);
    for i in 0..count {
        let payload = format!("m-{i}");
        send_record(
            &producer,
            BaseRecord::with_opaque_to(topic, Box::new(i)).payload(payload.as_bytes()),
        );
    }
    assert_eq!(delivered_ok(&producer).len(), count);
}

/// SCRAM-SHA-512 over TLS: alice produces to a topic under her prefix and consumes it back
/// in a group under hers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_scram_sha_512_produces_and_consumes() {
    with_server(|server| {
        let (bootstrap, ca) = (server.sasl_ssl, server.ca);
        let topic = unique_topic("orders.sasl");
        let group = unique_topic("billing-sasl");
        let settings = sasl_ssl_settings(&ca, "alice", ALICE_PASSWORD);
        produce(&bootstrap, &settings, &topic, 200);
        let consumer = consumer(&bootstrap, &settings, &group);
        consumer.subscribe(&[&topic]).unwrap();
        let mut seen = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < 200 {
            assert!(Instant::now() < deadline, "read {} of 200", seen.len());
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    seen.insert(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
                }
                Some(Err(e)) => panic!("consume error: {e}"),
                None => {}
            }
        }
        assert_eq!(seen, (0..200).map(|i| format!("m-{i}")).collect());
    })
    .await;
}

/// PLAIN and SCRAM-SHA-256 work too, over SASL_PLAINTEXT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_scram_sha_256_authenticate() {
    with_server(|server| {
        let bootstrap = server.sasl_plaintext.to_string();
        for mechanism in ["PLAIN", "SCRAM-SHA-256"] {
            let topic = unique_topic(&format!("orders.{}", mechanism.to_lowercase()));
            let settings = [
                ("security.protocol", "SASL_PLAINTEXT"),
                ("sasl.mechanisms", mechanism),
                ("sasl.username", "alice"),
                ("sasl.password", ALICE_PASSWORD),
            ];
            produce(&bootstrap, &settings, &topic, 10);
        }
    })
    .await;
}

/// A wrong password fails authentication in rdkafka; on the wire the server answers
/// SASL_AUTHENTICATION_FAILED and closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_and_the_connection_closes() {
    with_server(|server| {
        let bootstrap = server.sasl_ssl;
        let ca = server.ca;
        let plaintext = server.sasl_plaintext;
        let settings = sasl_ssl_settings(&ca, "alice", "not-the-password");
        let consumer = consumer(&bootstrap, &settings, "billing-wrong");
        assert!(consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .is_err());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let errors = consumer.context().0.lock().unwrap().clone();
            if errors
                .iter()
                .any(|(code, _)| *code == RDKafkaErrorCode::Authentication)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no authentication error: {errors:?}"
            );
            consumer.poll(Duration::from_millis(100));
        }

        for (mechanism, token) in [
            ("PLAIN", b"\0alice\0wrong-password".to_vec()),
            ("PLAIN", b"\0nobody\0whatever".to_vec()),
        ] {
            let mut raw = RawClient::connect(plaintext);
            let handshake = raw.call(
                &SaslHandshakeRequest::default()
                    .with_mechanism(StrBytes::from_static_str(mechanism)),
                1,
            );
            assert_eq!(handshake.error_code, 0);
            let answer = raw.call(
                &SaslAuthenticateRequest::default().with_auth_bytes(token.into()),
                2,
            );
            assert_eq!(answer.error_code, 58, "SASL_AUTHENTICATION_FAILED");
            assert!(raw.is_closed_by_server());
        }
    })
    .await;
}

/// A client that sends Metadata (or Produce) without authenticating is closed without an
/// answer; ApiVersions is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_skips_authentication_is_closed() {
    with_server(|server| {
        let plaintext = server.sasl_plaintext;
        let bootstrap = server.sasl_ssl;
        let ca = server.ca;
        let topic = unique_topic("orders.skip");
        let admin = sasl_ssl_settings(&ca, "admin", ADMIN_PASSWORD);
        produce(&bootstrap, &admin, &topic, 3);

        let mut raw = RawClient::connect(plaintext);
        let versions = raw.call(&ApiVersionsRequest::default(), 3);
        assert_eq!(versions.error_code, 0);
        let frame = raw.frame(&MetadataRequest::default().with_topics(None), 12);
        raw.send_raw(&frame).unwrap();
        assert!(raw.is_closed_by_server(), "Metadata before authentication");

        let batch = steadfast_testkit::batch::BatchSpec::numbered(
            1,
            0,
            |i| vec![i as u8],
            |_| b"sneaky".to_vec(),
        )
        .encode();
        let produce = kafka_protocol::messages::ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![
                kafka_protocol::messages::produce_request::TopicProduceData::default()
                    .with_name(kafka_protocol::messages::TopicName(StrBytes::from_string(
                        topic.clone(),
                    )))
                    .with_partition_data(vec![
                        kafka_protocol::messages::produce_request::PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(batch)),
                    ]),
            ]);
        let mut raw = RawClient::connect(plaintext);
        let frame = raw.frame(&produce, 9);
        raw.send_raw(&frame).unwrap();
        assert!(raw.is_closed_by_server(), "Produce before authentication");
        let (_, high) = {
            let consumer = consumer(&bootstrap, &admin, "billing-check");
            consumer
                .fetch_watermarks(&topic, 0, Duration::from_secs(10))
                .unwrap()
        };
        assert_eq!(high, 3, "the unauthenticated produce appended nothing");
    })
    .await;
}

/// alice cannot see, produce to or read a topic outside her prefixes, and cannot use a
/// group outside hers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rights_limit_topics_and_groups() {
    with_server(|server| {
        let bootstrap = server.sasl_ssl;
        let ca = server.ca;
        let secret = unique_topic("secret");
        let mine = unique_topic("orders.mine");
        let admin = sasl_ssl_settings(&ca, "admin", ADMIN_PASSWORD);
        produce(&bootstrap, &admin, &secret, 5);
        produce(&bootstrap, &admin, &mine, 5);
        let alice = sasl_ssl_settings(&ca, "alice", ALICE_PASSWORD);

        // Metadata: all topics hides the secret one; asking for it names the refusal.
        let probe = consumer(&bootstrap, &alice, "billing-probe");
        let all = probe.fetch_metadata(None, Duration::from_secs(10)).unwrap();
        let names: BTreeSet<&str> = all.topics().iter().map(|t| t.name()).collect();
        assert!(names.contains(mine.as_str()), "{names:?}");
        assert!(!names.contains(secret.as_str()), "{names:?}");
        let one = probe
            .fetch_metadata(Some(&secret), Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            one.topics()[0].error().map(RDKafkaErrorCode::from),
            Some(RDKafkaErrorCode::TopicAuthorizationFailed),
        );

        // Produce: refused with TOPIC_AUTHORIZATION_FAILED.
        let producer = logged_producer(&bootstrap, &alice);
        send_record(
            &producer,
            BaseRecord::with_opaque_to(&secret, Box::new(0)).payload(&b"no"[..]),
        );
        producer.flush(Duration::from_secs(30)).unwrap();
        let reports = producer.context().reports.lock().unwrap().clone();
        assert_eq!(reports.len(), 1);
        let error = reports[0].1.clone().unwrap_err();
        assert!(error.contains("authorization"), "{error}");

        // Consume in an allowed group from a forbidden topic: an authorization error.
        let reader = consumer(&bootstrap, &alice, &unique_topic("billing-reader"));
        reader.subscribe(&[&secret]).unwrap();
        let error = first_error(&reader);
        assert_eq!(
            error,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            "{error:?}"
        );

        // A group outside alice's prefixes: GROUP_AUTHORIZATION_FAILED.
        let outsider = consumer(&bootstrap, &alice, &unique_topic("other-group"));
        outsider.subscribe(&[&mine]).unwrap();
        let error = first_error(&outsider);
        assert_eq!(
            error,
            RDKafkaErrorCode::GroupAuthorizationFailed,
            "{error:?}"
        );
    })
    .await;
}

/// Polls until the consumer reports an error (from poll or the error callback); a message
/// instead fails the test.
fn first_error(consumer: &BaseConsumer<ErrorLog>) -> RDKafkaErrorCode {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no error reported");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Err(e)) => {
                if let Some(code) = e.rdkafka_error_code() {
                    return code;
                }
            }
            Some(Ok(m)) => panic!("read a message at offset {}", m.offset()),
            None => {}
        }
        if let Some((code, _)) = consumer.context().0.lock().unwrap().first() {
            return *code;
        }
    }
}

/// On an SSL listener with a client CA, a client certificate names the user: its rights
/// apply. A client without a certificate fails the TLS handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_the_user_on_ssl() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let users = dir.path().join("users.toml");
    write_users(&users);
    let server = Server::builder()
        .listen("127.0.0.1:0")
        .data_dir(dir.path().join("data"))
        .security_protocol(SecurityProtocol::Ssl)
        .tls(TlsConfig {
            certificate: pki.certificate.clone(),
            key: pki.key.clone(),
            client_ca: Some(pki.ca.clone()),
        })
        .users_file(&users)
        .start()
        .await
        .expect("server starts");
    let bootstrap = server.bootstrap_servers();
    tokio::task::spawn_blocking(move || {
        let with_certificate = [
            ("security.protocol", "SSL"),
            ("ssl.ca.location", pki.ca.to_str().unwrap()),
            (
                "ssl.certificate.location",
                pki.client_certificate.to_str().unwrap(),
            ),
            ("ssl.key.location", pki.client_key.to_str().unwrap()),
        ];
        produce(
            &bootstrap,
            &with_certificate,
            &unique_topic("orders.mtls"),
            5,
        );
        let probe = consumer(&bootstrap, &with_certificate, "billing-mtls");
        let refused = probe
            .fetch_metadata(Some(&unique_topic("secret")), Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            refused.topics()[0].error().map(RDKafkaErrorCode::from),
            Some(RDKafkaErrorCode::TopicAuthorizationFailed),
            "alice's rights apply to the certificate's user"
        );

        let without = [
            ("security.protocol", "SSL"),
            ("ssl.ca.location", pki.ca.to_str().unwrap()),
        ];
        let stranger = consumer(&bootstrap, &without, "billing-none");
        assert!(stranger
            .fetch_metadata(None, Duration::from_secs(3))
            .is_err());
    })
    .await
    .unwrap();
    server.shutdown().await;
}
