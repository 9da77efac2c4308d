//! `deploy/` is for users (there is no Docker engine or Kubernetes cluster where the suite
//! runs): these tests check what can be checked offline.
//!
//! - The Kubernetes manifests parse; the Deployment's settings (the ConfigMap's
//!   `steadfast.toml` with the Deployment's `STEADFAST_*` variables) are valid worker settings;
//!   the probes, the Service, the scrape annotations, the PodMonitor and the Dockerfile's
//!   `EXPOSE` name the port of `observe.listen`, which listens beyond the pod's loopback;
//!   `terminationGracePeriodSeconds` leaves the drain (`drain_timeout_ms`) time to finish
//!   plus time for the final commit; the pod and the image run as the same non-root user; the
//!   selectors of the PodDisruptionBudget and the Service match the pods.
//! - The ledger example binary, started with the Deployment's arguments and environment and
//!   the ConfigMap's settings file (only the broker, topic, group, schema and listen address
//!   changed to the test's), answers the liveness and readiness paths of the probes as the
//!   kubelet expects, exports on `/metrics` every metric name the Grafana dashboard's and the
//!   alert rules' PromQL expressions use (names taken from the scrape, not from a list), and
//!   drains on SIGTERM well within the grace period. The same check, given a dashboard with
//!   one name misspelled, reports that name.
//!
//! The ledger binary is `target/<profile>/examples/ledger`, which scripts/test.sh builds
//! (`cargo build --example ledger` before `cargo nextest run --test suite deploy`).

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_yaml_ng::Value;
use steadfast::WorkerConfig;
use support::*;

use crate::observe::until;

/// The repository's root.
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Time a worker needs after its drain: the final commit, leaving the group, closing the
/// clients.
const AFTER_DRAIN: Duration = Duration::from_secs(15);

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

// ---------------------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------------------

/// Every document of every `deploy/kubernetes/*.yaml`, with the file it came from.
fn manifests() -> Vec<(String, Value)> {
    let dir = format!("{ROOT}/deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut documents = Vec::new();
    for file in files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a file name")
            .to_owned();
        let text = std::fs::read_to_string(&file).expect("a readable manifest");
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = <Value as serde::Deserialize>::deserialize(document)
                .unwrap_or_else(|e| panic!("{name} is valid YAML: {e}"));
            if !value.is_null() {
                documents.push((name.clone(), value));
            }
        }
    }
    documents
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

/// The object of `kind` (the only one of its kind in the manifests).
fn object<'a>(manifests: &'a [(String, Value)], kind: &str) -> &'a Value {
    let found: Vec<&Value> = manifests
        .iter()
        .map(|(_, v)| v)
        .filter(|v| str_at(v, &["kind"]) == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "one {kind} in deploy/kubernetes");
    found[0]
}

/// The worker container of the Deployment (its only container).
fn container(deployment: &Value) -> &Value {
    let containers = at(deployment, &["spec", "template", "spec", "containers"])
        .and_then(Value::as_sequence)
        .expect("the Deployment has containers");
    assert_eq!(containers.len(), 1, "one container: the worker");
    &containers[0]
}

/// The container's environment: literal values as given, values from the cluster (a Secret,
/// the pod's name) as a placeholder naming their source.
fn environment(container: &Value) -> Vec<(String, String)> {
    container
        .get("env")
        .and_then(Value::as_sequence)
        .map(|env| {
            env.iter()
                .map(|e| {
                    let name = str_at(e, &["name"]).expect("a variable's name").to_owned();
                    let value = match (e.get("value"), e.get("valueFrom")) {
                        (Some(v), None) => match v {
                            Value::String(s) => s.clone(),
                            other => panic!("{name}: Kubernetes takes only strings: {other:?}"),
                        },
                        (None, Some(_)) => format!("{}-from-the-cluster", name.to_lowercase()),
                        _ => panic!("{name} has either a value or a valueFrom"),
                    };
                    (name, value)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What the pod's settings file holds: the ConfigMap's entry that the Deployment mounts
/// where `STEADFAST_CONFIG` points.
fn settings_file(manifests: &[(String, Value)], env: &[(String, String)]) -> String {
    let deployment = object(manifests, "Deployment");
    let path = env
        .iter()
        .find(|(name, _)| name == steadfast::config::CONFIG_ENV)
        .map(|(_, value)| value.clone())
        .expect("STEADFAST_CONFIG names the settings file");
    let (dir, file) = path.rsplit_once('/').expect("an absolute path");
    let mount = container(deployment)
        .get("volumeMounts")
        .and_then(Value::as_sequence)
        .and_then(|mounts| {
            mounts
                .iter()
                .find(|m| str_at(m, &["mountPath"]) == Some(dir))
        })
        .unwrap_or_else(|| panic!("a volume is mounted at {dir}"));
    let volume = str_at(mount, &["name"]).expect("the mount names a volume");
    let config_map = at(deployment, &["spec", "template", "spec", "volumes"])
        .and_then(Value::as_sequence)
        .and_then(|vs| vs.iter().find(|v| str_at(v, &["name"]) == Some(volume)))
        .and_then(|v| str_at(v, &["configMap", "name"]))
        .unwrap_or_else(|| panic!("volume {volume} is a ConfigMap"));
    let map = object(manifests, "ConfigMap");
    assert_eq!(str_at(map, &["metadata", "name"]), Some(config_map));
    str_at(map, &["data", file])
        .unwrap_or_else(|| panic!("ConfigMap {config_map} has the entry {file}"))
        .to_owned()
}

/// The worker settings a pod runs with.
fn pod_settings(manifests: &[(String, Value)]) -> WorkerConfig {
    let env = environment(container(object(manifests, "Deployment")));
    let text = settings_file(manifests, &env);
    WorkerConfig::from_toml_and_env(&text, env)
        .unwrap_or_else(|e| panic!("the ConfigMap's settings with the Deployment's env: {e}"))
}

/// The port of an `ip:port` address.
fn port_of(listen: &str) -> u16 {
    listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{listen} ends in a port"))
}

/// A probe's or a Service's port: a number, or the name of one of the container's ports.
fn resolve_port(container: &Value, port: &Value) -> u16 {
    match port {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .expect("a port number"),
        Value::String(name) => container
            .get("ports")
            .and_then(Value::as_sequence)
            .and_then(|ports| {
                ports
                    .iter()
                    .find(|p| str_at(p, &["name"]) == Some(name.as_str()))
            })
            .and_then(|p| p.get("containerPort"))
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok())
            .unwrap_or_else(|| panic!("the container has a port named {name}")),
        other => panic!("a port: {other:?}"),
    }
}

/// A probe's HTTP path and port.
fn probe(container: &Value, which: &str) -> (String, u16) {
    let get = at(container, &[which, "httpGet"]).unwrap_or_else(|| panic!("an HTTP {which}"));
    let path = str_at(get, &["path"]).expect("a probe path").to_owned();
    let port = resolve_port(container, get.get("port").expect("a probe port"));
    (path, port)
}

fn labels(value: &Value) -> BTreeMap<String, String> {
    value
        .as_mapping()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether every label of `selector` is on the pods of `deployment`.
fn selects_pods(selector: &Value, deployment: &Value) -> bool {
    let pods =
        labels(at(deployment, &["spec", "template", "metadata", "labels"]).expect("pod labels"));
    let wanted = labels(selector);
    !wanted.is_empty() && wanted.iter().all(|(k, v)| pods.get(k) == Some(v))
}

/// The Dockerfile's instructions, continuation lines joined and comments left out.
fn dockerfile() -> Vec<String> {
    let text = read("deploy/Dockerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    instructions
}

/// The instructions of the Dockerfile's last stage (from its `FROM` on).
fn final_stage(instructions: &[String]) -> &[String] {
    let last_from = instructions
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .expect("a FROM");
    &instructions[last_from..]
}

#[test]
fn manifests_parse_and_agree_with_the_worker_settings() {
    let manifests = manifests();
    for kind in [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "Kustomization",
    ] {
        object(&manifests, kind);
    }
    let kustomized: BTreeSet<&str> = object(&manifests, "Kustomization")
        .get("resources")
        .and_then(Value::as_sequence)
        .expect("kustomization resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let files: BTreeSet<&str> = manifests
        .iter()
        .filter(|(_, v)| str_at(v, &["kind"]) != Some("Kustomization"))
        .map(|(f, _)| f.as_str())
        .collect();
    assert_eq!(kustomized, files, "kustomization.yaml lists every manifest");

    let deployment = object(&manifests, "Deployment");
    let worker = container(deployment);
    let settings = pod_settings(&manifests);

    // The endpoint: on, reachable from the kubelet, on the port every manifest names.
    let listen = settings
        .observe
        .listen
        .clone()
        .expect("observe.listen is set: without it the worker serves no probes or metrics");
    assert!(
        listen.starts_with("0.0.0.0:") || listen.starts_with("[::]:"),
        "observe.listen {listen} must accept connections from outside the pod (the kubelet, Prometheus)"
    );
    let port = port_of(&listen);
    let (live_path, live_port) = probe(worker, "livenessProbe");
    let (ready_path, ready_port) = probe(worker, "readinessProbe");
    assert_eq!(
        live_port, port,
        "the liveness probe asks observe.listen's port"
    );
    assert_eq!(
        ready_port, port,
        "the readiness probe asks observe.listen's port"
    );
    assert_ne!(
        live_path, ready_path,
        "liveness and readiness ask different things: a worker whose store is down must not be restarted"
    );
    let annotations =
        at(deployment, &["spec", "template", "metadata", "annotations"]).expect("pod annotations");
    assert_eq!(
        str_at(annotations, &["prometheus.io/port"]),
        Some(port.to_string().as_str())
    );
    assert_eq!(
        str_at(annotations, &["prometheus.io/path"]),
        Some("/metrics")
    );
    let service = object(&manifests, "Service");
    let service_port = at(service, &["spec", "ports"])
        .and_then(Value::as_sequence)
        .and_then(|p| p.first())
        .expect("a Service port");
    assert_eq!(
        resolve_port(
            worker,
            service_port.get("targetPort").expect("a targetPort")
        ),
        port
    );
    assert!(selects_pods(
        at(service, &["spec", "selector"]).expect("a Service selector"),
        deployment
    ));
    let pod_monitor: Value = serde_yaml_ng::from_str(&read("deploy/prometheus/podmonitor.yaml"))
        .expect("podmonitor.yaml is valid YAML");
    let monitored = at(&pod_monitor, &["spec", "podMetricsEndpoints"])
        .and_then(Value::as_sequence)
        .and_then(|e| e.first())
        .expect("a PodMonitor endpoint");
    assert_eq!(
        resolve_port(worker, monitored.get("port").expect("a port")),
        port
    );
    assert!(selects_pods(
        at(&pod_monitor, &["spec", "selector", "matchLabels"]).expect("a selector"),
        deployment
    ));
    let dockerfile = dockerfile();
    assert!(
        final_stage(&dockerfile)
            .iter()
            .any(|i| i == &format!("EXPOSE {port}")),
        "the image exposes {port}"
    );

    // Shutdown: the kubelet's SIGKILL comes after the drain and the final commit.
    let grace = at(
        deployment,
        &["spec", "template", "spec", "terminationGracePeriodSeconds"],
    )
    .and_then(Value::as_u64)
    .map(Duration::from_secs)
    .expect("terminationGracePeriodSeconds");
    let drain = Duration::from_millis(settings.drain_timeout_ms);
    assert!(
        grace >= drain + AFTER_DRAIN,
        "terminationGracePeriodSeconds ({grace:?}) leaves the drain ({drain:?}) {AFTER_DRAIN:?} for the final commit"
    );
    assert!(
        drain >= Duration::from_millis(WorkerConfig::default().drain_timeout_ms),
        "the pod drains no shorter than the default"
    );

    // Non-root, in the pod and in the image.
    let pod_security = at(deployment, &["spec", "template", "spec", "securityContext"])
        .expect("a pod securityContext");
    assert_eq!(
        at(pod_security, &["runAsNonRoot"]).and_then(Value::as_bool),
        Some(true)
    );
    let uid = at(pod_security, &["runAsUser"])
        .and_then(Value::as_u64)
        .expect("runAsUser");
    assert_ne!(uid, 0, "runAsUser is not root");
    let container_security = worker
        .get("securityContext")
        .expect("a container securityContext");
    assert!(
        container_security.get("runAsUser").is_none()
            && container_security.get("runAsNonRoot").is_none(),
        "the container does not override the pod's user"
    );
    assert_eq!(
        at(container_security, &["allowPrivilegeEscalation"]).and_then(Value::as_bool),
        Some(false)
    );
    let user = final_stage(&dockerfile)
        .iter()
        .rev()
        .find_map(|i| i.strip_prefix("USER "))
        .expect("the image's last stage sets USER");
    let image_uid: u64 = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .expect("USER is numeric (runAsNonRoot can only verify a numeric user)");
    assert_eq!(image_uid, uid, "the image's USER is the pod's runAsUser");

    // The image: built in a stage of its own, running the ledger, which the pod does not
    // replace.
    let stages = dockerfile.iter().filter(|i| i.starts_with("FROM ")).count();
    assert!(stages >= 2, "a multi-stage build");
    assert!(
        dockerfile
            .iter()
            .any(|i| i.contains("cargo build --release --locked --example ledger")),
        "the builder builds the ledger example"
    );
    assert!(
        final_stage(&dockerfile)
            .iter()
            .any(|i| i == r#"ENTRYPOINT ["/usr/local/bin/ledger"]"#),
        "the image runs the ledger"
    );
    assert!(
        worker.get("command").is_none(),
        "the pod runs the image's entrypoint"
    );

    // Resources, and the disruption budget over the same pods.
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                at(worker, &["resources", kind, resource]).is_some(),
                "resources.{kind}.{resource} is set"
            );
        }
    }
    let budget = object(&manifests, "PodDisruptionBudget");
    assert!(selects_pods(
        at(budget, &["spec", "selector", "matchLabels"]).expect("a PDB selector"),
        deployment
    ));
    assert!(
        at(budget, &["spec", "maxUnavailable"]).is_some()
            || at(budget, &["spec", "minAvailable"]).is_some()
    );
    assert!(selects_pods(
        at(deployment, &["spec", "selector", "matchLabels"]).expect("a Deployment selector"),
        deployment
    ));
}

// ---------------------------------------------------------------------------------------
// PromQL
// ---------------------------------------------------------------------------------------

/// PromQL's functions (Prometheus 3) and aggregation operators: an identifier followed by
/// `(` must be one of them.
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "deg",
    "delta",
    "deriv",
    "double_exponential_smoothing",
    "end",
    "exp",
    "floor",
    "histogram_avg",
    "histogram_count",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_sum",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "mad_over_time",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_by_label",
    "sort_by_label_desc",
    "sort_desc",
    "sqrt",
    "start",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "vector",
    "year",
];
const AGGREGATIONS: &[&str] = &[
    "avg",
    "bottomk",
    "count",
    "count_values",
    "group",
    "limit_ratio",
    "limitk",
    "max",
    "min",
    "quantile",
    "stddev",
    "stdvar",
    "sum",
    "topk",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Other keywords and literals.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "offset", "bool", "atan2", "inf", "nan",
];

/// The metric names an expression selects: identifiers standing alone or before `{` or `[`,
/// leaving out functions, aggregations, keywords, label names (inside `{...}` and the lists
/// after `by`, `on`, ...), strings, numbers, durations and Grafana's `$variables`. An
/// identifier before `(` that is no function is an error.
fn promql_metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening bracket to its match, stepping over strings inside.
    let skip_group = |mut i: usize, open: char, close: char| -> Result<usize, String> {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(i + 1);
                    }
                }
                '"' | '\'' | '`' => i = skip_string(&chars, i)? - 1,
                _ => {}
            }
            i += 1;
        }
        Err(format!("unclosed {open} in {expr}"))
    };
    let next_non_space = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i)?;
        } else if c == '{' {
            i = skip_group(i, '{', '}')?;
        } else if c == '[' {
            i = skip_group(i, '[', ']')?;
        } else if c == '$' {
            // Grafana: $name, ${name}, ${name:format}, $__rate_interval.
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_group(i, '{', '}')?;
            } else {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number (1, 0.5, 1e3, 0x1f, Inf) or a duration (5m, 1h30m).
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || chars[i] == '.'
                    || chars[i] == '_'
                    || (matches!(chars[i], '+' | '-') && matches!(chars[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = next_non_space(i);
            let before_paren = chars.get(next) == Some(&'(');
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) {
                if before_paren {
                    i = skip_group(next, '(', ')')?;
                }
            } else if before_paren {
                if !FUNCTIONS.contains(&word.as_str()) && !AGGREGATIONS.contains(&lower.as_str()) {
                    return Err(format!("`{word}(` is no PromQL function, in {expr}"));
                }
            } else {
                // `sum by (..) (..)`: an aggregation before its label list.
                let after: String = chars[next..].iter().take(8).collect();
                let aggregation = AGGREGATIONS.contains(&lower.as_str())
                    && (after.starts_with("by") || after.starts_with("without"));
                if !aggregation && !KEYWORDS.contains(&lower.as_str()) {
                    names.insert(word);
                }
            }
        } else {
            // Operators, parentheses, commas.
            i += 1;
        }
    }
    Ok(names)
}

/// The index just past the string literal starting at `start`.
fn skip_string(chars: &[char], start: usize) -> Result<usize, String> {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        if chars[i] == '\\' && quote != '`' {
            i += 2;
            continue;
        }
        if chars[i] == quote {
            return Ok(i + 1);
        }
        i += 1;
    }
    Err("an unclosed string".to_owned())
}

/// Every PromQL expression of a Grafana dashboard: each `expr` of a panel's queries, nested
/// rows included, and the selector of each `label_values(selector, label)` variable.
fn dashboard_expressions(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    if key == "expr" {
                        out.push(v.as_str().expect("an expr is a string").to_owned());
                    } else {
                        walk(v, out);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard.get("panels").expect("panels"), &mut out);
    let variables = dashboard
        .pointer("/templating/list")
        .and_then(serde_json::Value::as_array)
        .expect("templating variables");
    for variable in variables {
        if variable.get("type").and_then(serde_json::Value::as_str) != Some("query") {
            continue;
        }
        let query = variable
            .pointer("/query/query")
            .or_else(|| variable.get("query"))
            .and_then(serde_json::Value::as_str)
            .expect("a query variable's query");
        let selector = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
            .map(|(selector, _label)| selector.to_owned())
            .unwrap_or_else(|| panic!("a label_values(selector, label) variable: {query}"));
        out.push(selector);
    }
    out
}

/// The dashboard's expressions, from its JSON text.
fn dashboard_expressions_of(text: &str) -> Vec<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(text).expect("the dashboard is valid JSON");
    dashboard_expressions(&dashboard)
}

/// Every alert rule's expression, with its name; each rule is checked for what an alert
/// needs to page usefully.
fn alert_expressions(text: &str) -> Vec<(String, String)> {
    let rules: Value = serde_yaml_ng::from_str(text).expect("alerts.yml is valid YAML");
    let mut out = Vec::new();
    for group in rules
        .get("groups")
        .and_then(Value::as_sequence)
        .expect("rule groups")
    {
        for rule in group
            .get("rules")
            .and_then(Value::as_sequence)
            .expect("rules")
        {
            let name = str_at(rule, &["alert"]).expect("an alert name").to_owned();
            let expr = str_at(rule, &["expr"]).expect("an expr").to_owned();
            assert!(rule.get("for").is_some(), "{name} waits before firing");
            assert!(
                str_at(rule, &["labels", "severity"]).is_some(),
                "{name} has a severity"
            );
            assert!(
                str_at(rule, &["annotations", "summary"]).is_some(),
                "{name} has a summary"
            );
            out.push((name, expr));
        }
    }
    out
}

/// The metric names `expressions` use that `exported` lacks, each with an expression that
/// uses it.
fn not_exported(expressions: &[String], exported: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut missing = BTreeMap::new();
    for expr in expressions {
        let names = promql_metric_names(expr).unwrap_or_else(|e| panic!("{e}"));
        assert!(!names.is_empty(), "`{expr}` selects no metric");
        for name in names {
            if !exported.contains(&name) {
                missing.entry(name).or_insert_with(|| expr.clone());
            }
        }
    }
    missing
}

#[test]
fn promql_names_are_read_as_metrics_and_everything_else_is_left_out() {
    let names = |e: &str| promql_metric_names(e).expect("a valid expression");
    let set = |ns: &[&str]| ns.iter().map(|n| (*n).to_owned()).collect::<BTreeSet<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le, group) (rate(a_seconds_bucket{group=~"$group", topic="x{y}"}[$__rate_interval])))"#
        ),
        set(&["a_seconds_bucket"])
    );
    assert_eq!(
        names(
            "sum without (pod) (b_total) / on (group) group_left (topic) c offset 5m > bool 1e-3"
        ),
        set(&["b_total", "c"])
    );
    assert_eq!(
        names(
            r#"max by(group) (min_over_time(d{topic!~".+[.]retry[.][0-9]+"}[5m])) and e == 2 unless sum(f[1h:5m])"#
        ),
        set(&["d", "e", "f"])
    );
    assert_eq!(
        names(r#"count(g{x="a"}) or vector(0) > ${threshold:raw} and inf > nan"#),
        set(&["g"])
    );
    assert!(
        promql_metric_names("rat(h[5m])").is_err(),
        "a misspelled function is refused"
    );
}

// ---------------------------------------------------------------------------------------
// The ledger worker as the Deployment runs it
// ---------------------------------------------------------------------------------------

/// A ledger transaction as the example reads it.
#[derive(Debug, serde::Serialize)]
struct Txn {
    txn: String,
    account: String,
    amount: i64,
    version: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    fail: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    poison: Option<bool>,
}

/// The ledger process; killed if the test ends without stopping it.
struct Ledger(Child);

impl Drop for Ledger {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The Deployment's arguments with `$(NAME)` replaced from `vars`, and the value after each
/// flag of `overrides` replaced.
fn pod_arguments(
    container: &Value,
    vars: &BTreeMap<&str, String>,
    overrides: &[(&str, &str)],
) -> Vec<String> {
    let mut args: Vec<String> = container
        .get("args")
        .and_then(Value::as_sequence)
        .expect("the container's args")
        .iter()
        .map(|a| a.as_str().expect("args are strings").to_owned())
        .map(|a| {
            vars.iter().fold(a, |a, (name, value)| {
                a.replace(&format!("$({name})"), value)
            })
        })
        .collect();
    for (flag, value) in overrides {
        let at = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("the pod passes {flag}"));
        args[at + 1] = (*value).to_owned();
    }
    assert!(
        !args.iter().any(|a| a.contains("$(")),
        "every $(NAME) in the args is a variable of the test: {args:?}"
    );
    args
}

/// The names of the samples of a Prometheus text-format scrape (histograms' `_bucket`,
/// `_sum` and `_count` as they are).
fn sample_names(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The sum of `name`'s samples whose label text contains `labels`.
fn sample_sum(body: &str, name: &str, labels: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `GET path` on 127.0.0.1:`port`: status and body; status 0 while nothing listens there.
async fn get(port: u16, path: &str) -> (u16, String) {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    if tokio::net::TcpStream::connect(address).await.is_err() {
        return (0, String::new());
    }
    crate::observe::get(address, path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_pod_answers_its_probes_and_exports_every_metric_the_dashboard_and_alerts_use() {
    let binary = example_binary("ledger");
    let manifests = manifests();
    let deployment = object(&manifests, "Deployment");
    let worker = container(deployment);
    let (live_path, _) = probe(worker, "livenessProbe");
    let (ready_path, _) = probe(worker, "readinessProbe");
    let grace = at(
        deployment,
        &["spec", "template", "spec", "terminationGracePeriodSeconds"],
    )
    .and_then(Value::as_u64)
    .map(Duration::from_secs)
    .expect("terminationGracePeriodSeconds");

    let dir = tempfile::tempdir().expect("temp dir");
    let server = steadfast_testkit::start_server(&dir.path().join("data")).await;
    let bootstrap = server.bootstrap_servers();
    let (topic, group) = topic_and_group(&bootstrap, "deploy-ledger", 2).await;
    let schema = fresh_schema();

    // The pod's environment and settings file; only where to listen (a free local port
    // instead of the pod's 0.0.0.0:9464) and how often lag is read (the test waits for it)
    // are the test's.
    let vars = BTreeMap::from([
        ("KAFKA_BOOTSTRAP", bootstrap.clone()),
        ("POSTGRES_URL", POSTGRES_URL.to_owned()),
        ("REDIS_URL", REDIS_URL.to_owned()),
    ]);
    let mut env = environment(worker);
    let settings_path = dir.path().join("steadfast.toml");
    std::fs::write(&settings_path, settings_file(&manifests, &env)).expect("settings file");
    for (name, value) in &mut env {
        if name == steadfast::config::CONFIG_ENV {
            *value = settings_path.display().to_string();
        } else if let Some(test_value) = vars.get(name.as_str()) {
            value.clone_from(test_value);
        }
    }
    let port = free_port();
    env.push((
        "STEADFAST_OBSERVE_LISTEN".to_owned(),
        format!("127.0.0.1:{port}"),
    ));
    env.push((
        "STEADFAST_OBSERVE_LAG_INTERVAL_MS".to_owned(),
        "200".to_owned(),
    ));
    let args = pod_arguments(
        worker,
        &vars,
        &[
            ("--topic", topic.as_str()),
            ("--group", group.as_str()),
            ("--schema", schema.as_str()),
        ],
    );
    let log = dir.path().join("ledger.log");
    let mut ledger = Ledger(
        Command::new(&binary)
            .args(&args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("the ledger starts"),
    );
    let log_tail = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let start = text.len().saturating_sub(4_000);
        text.get(start..).unwrap_or_default().to_owned()
    };

    // Live from the start, and ready once it consumes.
    let (live_path, ready_path) = (live_path.as_str(), ready_path.as_str());
    let started = Instant::now();
    loop {
        let (status, body) = get(port, live_path).await;
        if status == 200 && body.contains(r#""live":true"#) {
            break;
        }
        if let Some(exit) = ledger.0.try_wait().expect("the ledger's status") {
            panic!("the ledger exited at start: {exit}\n{}", log_tail());
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the liveness probe answers within 30 s:\n{}",
            log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until(
        Duration::from_secs(60),
        "the readiness probe answers 200",
        || async move { (get(port, ready_path).await.0 == 200).then_some(()) },
    )
    .await;

    // Handled, retried in place, through a retry tier, dead-lettered, dropped as stale.
    let mut txns = Vec::new();
    for i in 0..20 {
        txns.push(Txn {
            txn: format!("t{i}"),
            account: format!("a{}", i % 5),
            amount: 10,
            version: 10 + i64::from(i),
            fail: match i {
                3 | 7 => Some(1),
                11 => Some(3),
                _ => None,
            },
            poison: (i == 13).then_some(true),
        });
    }
    // Older than a0's versions 10, 15 applied above: stale.
    txns.push(Txn {
        txn: "t-stale".to_owned(),
        account: "a0".to_owned(),
        amount: 10,
        version: 1,
        fail: None,
        poison: None,
    });
    let records: Vec<_> = txns
        .iter()
        .map(|t| {
            (
                t.account.as_bytes().to_vec(),
                serde_json::to_vec(t).expect("encodes"),
            )
        })
        .collect();
    produce_to(&bootstrap, &topic, &records, None).await;

    let finished = records.len() as f64;
    let labels = format!(r#"topic="{topic}""#);
    let body = until(
        Duration::from_secs(90),
        "every transaction finished, and lag read",
        || {
            let labels = labels.clone();
            async move {
                let (status, body) = get(port, "/metrics").await;
                let outcome = |o: &str| {
                    sample_sum(
                        &body,
                        "steadfast_messages_total",
                        &format!(r#"outcome="{o}""#),
                    )
                };
                let done = status == 200
                    && outcome("handled") + outcome("dead_lettered") + outcome("dropped")
                        >= finished
                    && outcome("routed") >= 1.0
                    && outcome("dead_lettered") >= 1.0
                    && body.lines().any(|l| {
                        l.starts_with("steadfast_consumer_lag_messages{") && l.contains(&labels)
                    });
                done.then_some(body)
            }
        },
    )
    .await;
    let exported = sample_names(&body);

    // Every name the dashboard and the alerts use is in the scrape.
    let dashboard_text = read("deploy/grafana/steadfast.json");
    let dashboard = dashboard_expressions_of(&dashboard_text);
    assert!(
        dashboard.len() >= 20,
        "the dashboard's queries are read: {}",
        dashboard.len()
    );
    let alerts: Vec<String> = alert_expressions(&read("deploy/prometheus/alerts.yml"))
        .into_iter()
        .map(|(_, expr)| expr)
        .collect();
    assert!(alerts.len() >= 4, "the alert rules are read");
    for (what, expressions) in [("the dashboard", &dashboard), ("the alerts", &alerts)] {
        let missing = not_exported(expressions, &exported);
        assert!(
            missing.is_empty(),
            "{what} name metrics the worker does not export: {missing:#?}\nexported: {exported:#?}"
        );
    }
    // The check sees a misspelling: one name changed in a copy of the dashboard.
    let misspelled = dashboard_text.replace("steadfast_parked_keys", "steadfast_parked_key");
    assert_ne!(
        misspelled, dashboard_text,
        "the dashboard shows parked keys"
    );
    let missing = not_exported(&dashboard_expressions_of(&misspelled), &exported);
    assert_eq!(
        missing.keys().collect::<Vec<_>>(),
        ["steadfast_parked_key"],
        "the misspelled name, and only it, is reported"
    );

    // SIGTERM, as the kubelet sends it: drained, committed and gone within the grace period.
    let stopping = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &ledger.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "SIGTERM sent");
    let exit = loop {
        if let Some(exit) = ledger.0.try_wait().expect("the ledger's status") {
            break exit;
        }
        assert!(
            stopping.elapsed() < grace,
            "the ledger still runs {grace:?} after SIGTERM, when the kubelet kills it:\n{}",
            log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        exit.success(),
        "the ledger exits 0 after SIGTERM: {exit}\n{}",
        log_tail()
    );

    drop_schema(&schema).await;
}

/// Removes the run's tables.
async fn drop_schema(schema: &str) {
    let Ok((client, connection)) =
        tokio_postgres::connect(POSTGRES_URL, tokio_postgres::NoTls).await
    else {
        return;
    };
    let driver = tokio::spawn(connection);
    let _ = client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await;
    drop(client);
    let _ = driver.await;
}
