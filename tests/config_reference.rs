//! `docs/configuration.md` against the code: every key of `steadfast.toml` documented once and
//! nothing else, with the code's type, default and `STEADFAST_*` environment override.
//!
//! The code's keys come from walking `WorkerConfig`'s own `Deserialize` impl with a probe
//! deserializer, so every field is found, optional ones included, without a list kept here.
//! The defaults come from serializing `WorkerConfig::default()` and, for an optional table
//! (`[lock]`, `[dedup]`, ...), from deserializing the table with only its required keys, which
//! is what a `steadfast.toml` gets.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::Deserialize;
use steadfast::config::{ENV_OVERRIDES, KAFKA_ENV_PREFIX};
use steadfast::WorkerConfig;

const REFERENCE: &str = include_str!("../docs/configuration.md");

/// One row of the reference: `| key | type | default | env | meaning |`.
#[derive(Debug)]
struct Row {
    key: String,
    kind: String,
    default: String,
    env: Option<String>,
}

/// The rows of every table in the reference whose first cell is a backquoted key.
fn rows() -> BTreeMap<String, Row> {
    let mut rows = BTreeMap::new();
    for line in REFERENCE.lines() {
        let Some(inner) = line.trim().strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<&str> = inner.split(" | ").map(str::trim).collect();
        assert!(
            cells.len() >= 5,
            "a reference row needs key, type, default, env and meaning: {line}"
        );
        let key = cells[0]
            .strip_suffix('`')
            .unwrap_or_else(|| panic!("key cell not in backquotes: {line}"))
            .to_owned();
        let env = match cells[3] {
            "—" => None,
            env => Some(
                env.strip_prefix('`')
                    .and_then(|e| e.strip_suffix('`'))
                    .unwrap_or_else(|| panic!("env cell is neither — nor `VAR`: {line}"))
                    .to_owned(),
            ),
        };
        let row = Row {
            key: key.clone(),
            kind: cells[1].to_owned(),
            default: cells[2].to_owned(),
            env,
        };
        assert!(
            rows.insert(key.clone(), row).is_none(),
            "`{key}` is documented twice"
        );
    }
    assert!(!rows.is_empty(), "no rows found in docs/configuration.md");
    rows
}

/// The map-valued key a documented key belongs to: `kafka.<name>` is the `kafka` table.
fn code_key(documented: &str) -> &str {
    documented.strip_suffix(".<name>").unwrap_or(documented)
}

// ---------------------------------------------------------------------------------------
// The probe: a deserializer that answers every field a struct asks for and records its path.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    Integer,
    Float,
    Boolean,
    Array,
    /// A map with free keys (`[kafka]`).
    Table,
}

#[derive(Debug, Default)]
struct Found {
    /// Every leaf key with its TOML kind.
    leaves: BTreeMap<String, Kind>,
    /// Every path whose type is an `Option` (a leaf or a whole table).
    optional: BTreeSet<String>,
    /// Every path that is a struct (a TOML table with fixed keys).
    tables: BTreeSet<String>,
}

#[derive(Debug)]
struct ProbeError(String);

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProbeError {}

impl de::Error for ProbeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ProbeError(msg.to_string())
    }
}

struct Probe<'a> {
    path: String,
    found: &'a RefCell<Found>,
}

impl Probe<'_> {
    fn leaf(&self, kind: Kind) {
        self.found
            .borrow_mut()
            .leaves
            .insert(self.path.clone(), kind);
    }
}

macro_rules! integers {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
            self.leaf(Kind::Integer);
            visitor.visit_u8(0)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = ProbeError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, ProbeError> {
        Err(ProbeError(format!(
            "`{}` has a type this probe cannot walk; teach it",
            self.path
        )))
    }
    integers!(deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128);
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.leaf(Kind::Boolean);
        visitor.visit_bool(false)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.leaf(Kind::Float);
        visitor.visit_f32(0.0)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.leaf(Kind::Float);
        visitor.visit_f64(0.0)
    }
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.leaf(Kind::String);
        visitor.visit_char('x')
    }
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.leaf(Kind::String);
        // A text every string setting accepts, also those read through a parser
        // (`start_from`).
        visitor.visit_str("earliest")
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.deserialize_str(visitor)
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.deserialize_any(visitor)
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.deserialize_any(visitor)
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.found.borrow_mut().optional.insert(self.path.clone());
        visitor.visit_some(self)
    }
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.deserialize_any(visitor)
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        self.deserialize_any(visitor)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        visitor.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.leaf(Kind::Array);
        visitor.visit_seq(de::value::SeqDeserializer::<_, ProbeError>::new(
            std::iter::empty::<String>(),
        ))
    }
    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        self.deserialize_any(visitor)
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        self.deserialize_any(visitor)
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.leaf(Kind::Table);
        visitor.visit_map(de::value::MapDeserializer::<_, ProbeError>::new(
            std::iter::empty::<(String, String)>(),
        ))
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        self.found.borrow_mut().tables.insert(self.path.clone());
        visitor.visit_map(Fields {
            fields,
            next: 0,
            prefix: self.path,
            found: self.found,
        })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        // A unit-variant enum is a string in TOML (`ordering = "strict"`).
        self.leaf(Kind::String);
        visitor.visit_enum(de::value::StrDeserializer::<ProbeError>::new(variants[0]))
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        self.deserialize_any(visitor)
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_unit()
    }
}

/// Hands a struct every one of its fields, each value a probe at the field's path.
struct Fields<'a> {
    fields: &'static [&'static str],
    next: usize,
    prefix: String,
    found: &'a RefCell<Found>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = ProbeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ProbeError> {
        match self.fields.get(self.next) {
            None => Ok(None),
            Some(field) => seed
                .deserialize(IntoDeserializer::<ProbeError>::into_deserializer(*field))
                .map(Some),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ProbeError> {
        let field = self.fields[self.next];
        self.next += 1;
        let path = if self.prefix.is_empty() {
            field.to_owned()
        } else {
            format!("{}.{field}", self.prefix)
        };
        seed.deserialize(Probe {
            path,
            found: self.found,
        })
    }
}

fn probe() -> Found {
    let found = RefCell::new(Found::default());
    WorkerConfig::deserialize(Probe {
        path: String::new(),
        found: &found,
    })
    .expect("the probe walks every field of WorkerConfig");
    found.into_inner()
}

// ---------------------------------------------------------------------------------------
// The code's defaults.

/// The value at a dotted path of a TOML table.
fn at<'v>(table: &'v toml::Table, path: &str) -> Option<&'v toml::Value> {
    let mut parts = path.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

/// A value of the documented type, for a required key.
fn placeholder(row: &Row) -> toml::Value {
    if row.kind.starts_with("integer") {
        toml::Value::Integer(1)
    } else if row.kind.starts_with("string") {
        toml::Value::String("memory".to_owned())
    } else {
        panic!("`{}`: no placeholder for a required {}", row.key, row.kind)
    }
}

/// Deserializes `table` as a `WorkerConfig` (without `validate`) and serializes it back.
fn round_trip(table: toml::Table) -> Result<toml::Table, String> {
    let config: WorkerConfig = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string())?;
    match toml::Value::try_from(&config).map_err(|e| e.to_string())? {
        toml::Value::Table(table) => Ok(table),
        other => Err(format!("a WorkerConfig serialized to {other:?}")),
    }
}

/// The optional table a documented key lies in (`lock` for `lock.lease_ms`), if any.
fn optional_table<'f>(found: &'f Found, key: &str) -> Option<&'f str> {
    let (table, _) = key.split_once('.')?;
    let table = found.tables.get(table)?;
    found.optional.contains(table).then_some(table.as_str())
}

/// Every key's default as a `steadfast.toml` gets it: `WorkerConfig::default()` for the
/// top-level keys and the always-present tables, and for each optional table the values its
/// fields take when the table holds only its required keys.
fn defaults(found: &Found, rows: &BTreeMap<String, Row>) -> toml::Table {
    let mut all = match toml::Value::try_from(WorkerConfig::default()) {
        Ok(toml::Value::Table(table)) => table,
        other => panic!("WorkerConfig::default() serialized to {other:?}"),
    };
    for table in found.tables.iter().filter(|t| found.optional.contains(*t)) {
        assert!(
            !all.contains_key(table),
            "`[{table}]` is present in WorkerConfig::default(): an optional table is off by default"
        );
        let required: toml::Table = rows
            .values()
            .filter(|r| r.default == "required" && optional_table(found, &r.key) == Some(table))
            .map(|r| {
                let field = r.key.rsplit('.').next().expect("a dotted key").to_owned();
                (field, placeholder(r))
            })
            .collect();
        let mut file = toml::Table::new();
        file.insert(table.clone(), toml::Value::Table(required));
        let filled = round_trip(file).unwrap_or_else(|e| {
            panic!("`[{table}]` with only the keys documented as required: {e}")
        });
        all.insert(
            table.clone(),
            filled.get(table.as_str()).cloned().expect("the table"),
        );
    }
    all
}

// ---------------------------------------------------------------------------------------
// The checks.

#[test]
fn every_setting_of_the_code_is_in_the_reference_and_no_other() {
    let found = probe();
    let code: BTreeSet<&str> = found.leaves.keys().map(String::as_str).collect();
    let rows = rows();
    let documented: BTreeSet<&str> = rows.keys().map(|k| code_key(k)).collect();
    let missing: Vec<&&str> = code.difference(&documented).collect();
    let extra: Vec<&&str> = documented.difference(&code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/configuration.md is out of step with WorkerConfig\n  in the code, not documented: {missing:?}\n  documented, not in the code: {extra:?}"
    );
}

#[test]
fn documented_types_are_the_codes_types() {
    let found = probe();
    for row in rows().values() {
        let Some(kind) = found.leaves.get(code_key(&row.key)) else {
            continue; // reported by the key check
        };
        let word = match kind {
            Kind::String => "string",
            Kind::Integer => "integer",
            Kind::Float => "float",
            Kind::Boolean => "boolean",
            Kind::Array => "array",
            Kind::Table => "table",
        };
        assert!(
            row.kind.starts_with(word),
            "`{}` is documented as `{}`, the code has a TOML {word}",
            row.key,
            row.kind
        );
    }
}

#[test]
fn documented_defaults_are_the_codes_defaults() {
    let found = probe();
    let rows = rows();
    let defaults = defaults(&found, &rows);
    for row in rows.values() {
        let key = code_key(&row.key);
        if !found.leaves.contains_key(key) {
            continue; // reported by the key check
        }
        match row.default.as_str() {
            "required" => {
                let table = optional_table(&found, key).unwrap_or_else(|| {
                    panic!("`{key}` is documented as required outside an optional table")
                });
                // The table without this key must be refused, naming it.
                let mut without: toml::Table = rows
                    .values()
                    .filter(|r| {
                        r.default == "required"
                            && r.key != row.key
                            && optional_table(&found, &r.key) == Some(table)
                    })
                    .map(|r| {
                        let field = r.key.rsplit('.').next().expect("a dotted key").to_owned();
                        (field, placeholder(r))
                    })
                    .collect();
                let field = key.rsplit('.').next().expect("a dotted key");
                without.remove(field);
                let mut file = toml::Table::new();
                file.insert(table.to_owned(), toml::Value::Table(without));
                match round_trip(file) {
                    Ok(_) => panic!(
                        "`{key}` is documented as required, but `[{table}]` without it is accepted"
                    ),
                    Err(e) => assert!(
                        e.contains(field),
                        "`[{table}]` without `{field}` is refused, but not for it: {e}"
                    ),
                }
            }
            "unset" => {
                assert!(
                    found.optional.contains(key),
                    "`{key}` is documented as unset by default, but it is not optional in the code"
                );
                assert_eq!(
                    at(&defaults, key),
                    None,
                    "`{key}` is documented as unset by default"
                );
            }
            cell => {
                let literal = cell
                    .strip_prefix('`')
                    .and_then(|c| c.strip_suffix('`'))
                    .unwrap_or_else(|| {
                        panic!("`{key}`: the default is not `required`, `unset` or a `TOML value`: {cell}")
                    });
                let parsed: toml::Table = toml::from_str(&format!("v = {literal}"))
                    .unwrap_or_else(|e| panic!("`{key}`: the default {literal} is not TOML: {e}"));
                assert_eq!(
                    at(&defaults, key),
                    parsed.get("v"),
                    "`{key}`: documented default {literal}, the code's differs"
                );
            }
        }
    }
}

#[test]
fn environment_overrides_are_documented_on_their_keys() {
    let rows = rows();
    let documented: BTreeSet<(String, String)> = rows
        .values()
        .filter(|r| r.key != "kafka.<name>")
        .filter_map(|r| r.env.clone().map(|env| (env, r.key.clone())))
        .collect();
    let code: BTreeSet<(String, String)> = ENV_OVERRIDES
        .iter()
        .map(|(env, key)| ((*env).to_owned(), (*key).to_owned()))
        .collect();
    let missing: Vec<_> = code.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "environment overrides out of step with config::ENV_OVERRIDES\n  in the code, not documented: {missing:?}\n  documented, not in the code: {extra:?}"
    );
    let kafka = rows
        .get("kafka.<name>")
        .expect("the [kafka] table is documented as `kafka.<name>`");
    assert_eq!(
        kafka.env.as_deref(),
        Some(format!("{KAFKA_ENV_PREFIX}<NAME>").as_str()),
        "librdkafka properties are set by {KAFKA_ENV_PREFIX}<NAME>"
    );
}

#[test]
fn the_references_example_file_is_accepted() {
    let example = REFERENCE
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/configuration.md has a ```toml example");
    if let Err(e) = WorkerConfig::from_toml(example) {
        panic!("the example in docs/configuration.md is refused: {e}");
    }
}

/// A store setting: a store URL, or where the stores keep their tables and keys.
fn is_store_setting(row: &Row) -> bool {
    row.kind.contains("store URL") || row.key.starts_with("stores.")
}

#[test]
fn every_store_setting_has_an_environment_override() {
    let rows = rows();
    let store_settings: Vec<&Row> = rows.values().filter(|r| is_store_setting(r)).collect();
    assert!(
        store_settings.len() >= 7,
        "the reference documents the stores' keys and every policy's store: {store_settings:?}"
    );
    let without: Vec<&str> = store_settings
        .iter()
        .filter(|r| r.env.is_none())
        .map(|r| r.key.as_str())
        .collect();
    assert!(
        without.is_empty(),
        "store settings a pod cannot take from its environment: {without:?}"
    );
}

/// A value for `row`'s override that passes the checks: the variable's text and the TOML
/// value the key then holds.
fn env_sample(row: &Row) -> (String, toml::Value) {
    let text = |t: &str| (t.to_owned(), toml::Value::String(t.to_owned()));
    if row.kind.starts_with("integer") {
        ("1000".to_owned(), toml::Value::Integer(1000))
    } else if row.kind.starts_with("array") {
        (
            "1000,2000".to_owned(),
            toml::Value::Array(vec![toml::Value::Integer(1000), toml::Value::Integer(2000)]),
        )
    } else if row.kind.starts_with("boolean") {
        ("true".to_owned(), toml::Value::Boolean(true))
    } else if row.key == "ordering" {
        text("relaxed")
    } else if row.key == "start_from" {
        text("2026-12-01T00:00:00Z")
    } else if row.key == "observe.listen" {
        text("127.0.0.1:9464")
    } else if row.key == "stores.schema" {
        text("from_env")
    } else if row.key == "transaction.postgres" {
        text("postgres://env@127.0.0.1:5432/from_env")
    } else if row.kind.contains("store URL") {
        text("redis://127.0.0.1:6379/7")
    } else if row.kind.starts_with("string") {
        text("from-env")
    } else {
        panic!("`{}`: no sample for a {} override", row.key, row.kind)
    }
}

#[test]
fn every_environment_override_sets_its_key() {
    let rows = rows();
    // `[rate_limit]` needs `per_second` before its store can be set alone.
    let file = "[rate_limit]\nper_second = 5\n";
    for (var, key) in ENV_OVERRIDES {
        let row = rows
            .get(key)
            .unwrap_or_else(|| panic!("`{key}` (set by {var}) is not documented"));
        let (text, value) = env_sample(row);
        let config = WorkerConfig::from_toml_and_env(file, [(var.to_owned(), text.clone())])
            .unwrap_or_else(|e| panic!("{var}={text} is refused: {e}"));
        let table = match toml::Value::try_from(&config) {
            Ok(toml::Value::Table(table)) => table,
            other => panic!("a WorkerConfig serialized to {other:?}"),
        };
        assert_eq!(
            at(&table, key),
            Some(&value),
            "{var}={text} does not set `{key}`"
        );
    }
}

/// Every type of `WorkerConfig`'s fields is named from the crate root, as `WorkerConfig`,
/// `Ordering` and `Retry` are: a user writing settings in code needs no `steadfast::config::`.
#[test]
fn every_settings_type_is_at_the_crate_root() {
    use steadfast::{
        BreakerConfig, ConfigError, DedupConfig, LockConfig, ObserveConfig, Ordering,
        RateLimitConfig, RetryConfig, StaleConfig, StoresConfig, TransactionConfig,
    };
    let config = WorkerConfig {
        ordering: Ordering::Relaxed,
        retry: RetryConfig::default(),
        stores: StoresConfig::default(),
        stale: Some(StaleConfig {
            store: "memory".to_owned(),
            copy_to_topic: false,
        }),
        lock: Some(LockConfig {
            store: "redis://127.0.0.1:6379".to_owned(),
            lease_ms: 10_000,
            keep_ms: 20,
        }),
        dedup: Some(DedupConfig {
            store: "memory".to_owned(),
            lease_ms: None,
            ttl_ms: 60_000,
        }),
        rate_limit: Some(RateLimitConfig {
            per_second: 10,
            burst: 1,
            store: None,
            name: None,
        }),
        breaker: Some(BreakerConfig::default()),
        transaction: Some(TransactionConfig {
            postgres: "postgres://postgres@127.0.0.1/test".to_owned(),
        }),
        observe: ObserveConfig::default(),
        ..WorkerConfig::default()
    };
    config.validate().expect("valid");
    let refused: Result<WorkerConfig, ConfigError> = WorkerConfig::from_toml("concurrency = 0");
    assert!(refused.is_err());
}
