//! The fleet file: YAML read with positions, decoded by hand into a
//! [`Document`] so that every error names its line and column.
//!
//! saphyr's `MarkedYaml` keeps a span on every node, keys included (serde
//! based YAML crates report positions for syntax errors only, so a bad MAC
//! or an unknown stream found later could not name its line). The decoder
//! checks keys, types and syntax (MACs, selectors, names, labels); the
//! server checks references. [`Spans`] maps each field path to its position
//! so the server's `field` in an error leads back to the line.

use std::collections::BTreeMap;
use std::fmt;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use serde_json::{Map, Value};

use super::{
    group_path, machine_path, BmcSpec, Document, GroupSpec, MachineSpec, PinSpec, RolloutSpec,
};
use crate::boot::select::Selector;
use crate::domain::MacAddr;
use crate::domain::{check_group_name, check_hostname, check_label_part};

/// A position in the file: line and column, both from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// A fleet file that cannot be read as one: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct YamlError {
    pub at: Position,
    pub message: String,
}

/// Where each field path is written: a scalar's value, or the key of a
/// mapping or list.
#[derive(Debug, Clone, Default)]
pub struct Spans(BTreeMap<String, Position>);

impl Spans {
    /// The position of `path`, or of the nearest enclosing path written in
    /// the file (`groups.web.variables.loader` → `groups.web.variables`).
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut p = path;
        loop {
            if let Some(at) = self.0.get(p) {
                return Some(*at);
            }
            p = &p[..p.rfind('.')?];
        }
    }
}

/// Reads a fleet file.
pub fn parse(text: &str) -> Result<(Document, Spans), YamlError> {
    let docs = MarkedYaml::load_from_str(text).map_err(|e| YamlError {
        at: Position {
            line: e.marker().line(),
            col: e.marker().col() + 1,
        },
        message: e.info().to_string(),
    })?;
    let mut d = Decoder::default();
    let doc = match docs.as_slice() {
        [] => Document::default(),
        [one] => d.document(one)?,
        [_, second, ..] => return Err(d.err(second, "one YAML document expected, found several")),
    };
    Ok((doc, d.spans))
}

fn at(node: &MarkedYaml<'_>) -> Position {
    Position {
        line: node.span.start.line(),
        col: node.span.start.col() + 1,
    }
}

/// What a node is, for "expected X, found Y".
fn kind(node: &MarkedYaml<'_>) -> String {
    match &node.data {
        YamlData::Value(Scalar::Null) => "null".into(),
        YamlData::Value(Scalar::Boolean(b)) => format!("a boolean ({b})"),
        YamlData::Value(Scalar::Integer(i)) => format!("a number ({i})"),
        YamlData::Value(Scalar::FloatingPoint(f)) => format!("a number ({f})"),
        YamlData::Value(Scalar::String(s)) => format!("a string ({s:?})"),
        YamlData::Representation(s, ..) => format!("a string ({s:?})"),
        YamlData::Sequence(_) => "a list".into(),
        YamlData::Mapping(_) => "a mapping".into(),
        YamlData::Tagged(..) => "a tagged value".into(),
        _ => "an alias or a bad value".into(),
    }
}

fn as_str<'a>(node: &'a MarkedYaml<'_>) -> Option<&'a str> {
    match &node.data {
        YamlData::Value(Scalar::String(s)) => Some(s),
        YamlData::Representation(s, ..) => Some(s),
        _ => None,
    }
}

fn is_null(node: &MarkedYaml<'_>) -> bool {
    matches!(node.data, YamlData::Value(Scalar::Null))
}

#[derive(Default)]
struct Decoder {
    spans: Spans,
}

type Entries<'n, 'i> = Vec<(&'n str, &'n MarkedYaml<'i>, &'n MarkedYaml<'i>)>;

impl Decoder {
    fn err(&self, node: &MarkedYaml<'_>, message: impl Into<String>) -> YamlError {
        YamlError {
            at: at(node),
            message: message.into(),
        }
    }

    fn mark(&mut self, path: &str, node: &MarkedYaml<'_>) {
        self.spans.0.insert(path.to_string(), at(node));
    }

    /// A mapping's entries, keys as strings, each key checked against
    /// `allowed` (when given).
    fn mapping<'n, 'i>(
        &self,
        node: &'n MarkedYaml<'i>,
        what: &str,
        allowed: Option<&[&str]>,
    ) -> Result<Entries<'n, 'i>, YamlError> {
        let YamlData::Mapping(map) = &node.data else {
            return Err(self.err(
                node,
                format!("{what}: expected a mapping, found {}", kind(node)),
            ));
        };
        let mut out = Vec::with_capacity(map.len());
        for (k, v) in map {
            let Some(key) = as_str(k) else {
                return Err(self.err(
                    k,
                    format!("{what}: keys must be strings, found {}", kind(k)),
                ));
            };
            if let Some(allowed) = allowed {
                if !allowed.contains(&key) {
                    return Err(self.err(
                        k,
                        format!(
                            "unknown key {key:?} in {what} (expected one of {})",
                            allowed.join(", ")
                        ),
                    ));
                }
            }
            out.push((key, k, v));
        }
        Ok(out)
    }

    fn string(&mut self, path: &str, node: &MarkedYaml<'_>) -> Result<String, YamlError> {
        self.mark(path, node);
        as_str(node).map(str::to_string).ok_or_else(|| {
            self.err(
                node,
                format!("{path}: expected a string, found {}", kind(node)),
            )
        })
    }

    fn nullable_string(
        &mut self,
        path: &str,
        node: &MarkedYaml<'_>,
    ) -> Result<Option<String>, YamlError> {
        if is_null(node) {
            self.mark(path, node);
            return Ok(None);
        }
        self.string(path, node).map(Some)
    }

    fn integer(&mut self, path: &str, node: &MarkedYaml<'_>) -> Result<i64, YamlError> {
        self.mark(path, node);
        match &node.data {
            YamlData::Value(Scalar::Integer(i)) => Ok(*i),
            _ => Err(self.err(
                node,
                format!("{path}: expected a whole number, found {}", kind(node)),
            )),
        }
    }

    fn boolean(&mut self, path: &str, node: &MarkedYaml<'_>) -> Result<bool, YamlError> {
        self.mark(path, node);
        match &node.data {
            YamlData::Value(Scalar::Boolean(b)) => Ok(*b),
            _ => Err(self.err(
                node,
                format!("{path}: expected true or false, found {}", kind(node)),
            )),
        }
    }

    /// Any YAML value as JSON (template variables, canary, steps).
    fn json(&mut self, path: &str, node: &MarkedYaml<'_>) -> Result<Value, YamlError> {
        self.mark(path, node);
        Ok(match &node.data {
            YamlData::Value(Scalar::Null) => Value::Null,
            YamlData::Value(Scalar::Boolean(b)) => Value::Bool(*b),
            YamlData::Value(Scalar::Integer(i)) => Value::from(*i),
            YamlData::Value(Scalar::FloatingPoint(f)) => serde_json::Number::from_f64(**f)
                .map(Value::Number)
                .ok_or_else(|| self.err(node, format!("{path}: {f} is not a finite number")))?,
            YamlData::Value(Scalar::String(s)) => Value::String(s.to_string()),
            YamlData::Representation(s, ..) => Value::String(s.to_string()),
            YamlData::Sequence(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    out.push(self.json(&format!("{path}.{i}"), item)?);
                }
                Value::Array(out)
            }
            YamlData::Mapping(_) => Value::Object(self.object(path, node)?),
            _ => {
                return Err(self.err(
                    node,
                    format!(
                        "{path}: {} is not supported here (no tags or aliases)",
                        kind(node)
                    ),
                ))
            }
        })
    }

    fn object(
        &mut self,
        path: &str,
        node: &MarkedYaml<'_>,
    ) -> Result<Map<String, Value>, YamlError> {
        let mut out = Map::new();
        for (k, _, v) in self.mapping(node, path, None)? {
            let value = self.json(&format!("{path}.{k}"), v)?;
            out.insert(k.to_string(), value);
        }
        self.mark(path, node);
        Ok(out)
    }

    fn document(&mut self, node: &MarkedYaml<'_>) -> Result<Document, YamlError> {
        if is_null(node) {
            return Ok(Document::default());
        }
        let mut doc = Document::default();
        for (key, k, v) in self.mapping(node, "the top level", Some(&["groups", "machines"]))? {
            self.mark(key, k);
            if is_null(v) {
                continue;
            }
            match key {
                "groups" => {
                    for (name, nk, spec) in self.mapping(v, "groups", None)? {
                        check_group_name(name).map_err(|m| self.err(nk, format!("group {m}")))?;
                        let path = group_path(name, None);
                        self.mark(&path, nk);
                        let g = self.group(name, spec)?;
                        doc.groups.insert(name.to_string(), g);
                    }
                }
                _ => {
                    for (mac, mk, spec) in self.mapping(v, "machines", None)? {
                        let parsed: MacAddr =
                            mac.parse().map_err(|e: crate::domain::MacParseError| {
                                self.err(mk, e.to_string())
                            })?;
                        let canonical = parsed.to_string();
                        if doc.machines.contains_key(&canonical) {
                            return Err(self.err(
                                mk,
                                format!("machine {canonical} is listed twice (as {mac:?} too)"),
                            ));
                        }
                        self.mark(&machine_path(&canonical, None), mk);
                        let m = self.machine(&canonical, spec)?;
                        doc.machines.insert(canonical, m);
                    }
                }
            }
        }
        Ok(doc)
    }

    fn group(&mut self, name: &str, node: &MarkedYaml<'_>) -> Result<GroupSpec, YamlError> {
        let mut g = GroupSpec::default();
        if is_null(node) {
            return Ok(g);
        }
        let what = format!("group {name:?}");
        const KEYS: &[&str] = &[
            "description",
            "selector",
            "variables",
            "stream",
            "generation",
            "generations",
            "rollout",
            "bmc",
        ];
        for (key, k, v) in self.mapping(node, &what, Some(KEYS))? {
            let path = group_path(name, Some(key));
            match key {
                "description" => g.description = Some(self.string(&path, v)?),
                "selector" => {
                    let sel = self.nullable_string(&path, v)?;
                    if let Some(text) = &sel {
                        text.parse::<Selector>()
                            .map_err(|e| self.err(v, format!("{path}: {e}")))?;
                    }
                    g.selector = Some(sel);
                }
                "variables" => {
                    self.mark(&path, k);
                    g.variables = Some(self.object(&path, v)?);
                    self.mark(&path, k);
                }
                "stream" => g.stream = Some(self.string(&path, v)?),
                "generation" => g.generation = Some(self.integer(&path, v)?),
                "generations" => {
                    self.mark(&path, k);
                    let YamlData::Sequence(items) = &v.data else {
                        return Err(self.err(
                            v,
                            format!(
                                "{path}: expected a list of {{stream, generation}}, found {}",
                                kind(v)
                            ),
                        ));
                    };
                    let mut list = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        list.push(self.generation_ref(&format!("{path}.{i}"), item)?);
                    }
                    g.generations = Some(list);
                }
                "bmc" => {
                    g.bmc = Some(self.bmc(&path, v)?);
                    self.mark(&path, k);
                }
                _ => {
                    g.rollout = Some(self.rollout(&path, v)?);
                    self.mark(&path, k);
                }
            }
        }
        match (&g.stream, g.generation, &g.generations) {
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => Err(self.err(
                node,
                format!("{what}: give stream and generation, or generations, not both"),
            )),
            (Some(_), None, _) => Err(self.err(node, format!("{what}: stream without generation"))),
            (None, Some(_), _) => Err(self.err(node, format!("{what}: generation without stream"))),
            _ => Ok(g),
        }
    }

    fn rollout(&mut self, path: &str, node: &MarkedYaml<'_>) -> Result<RolloutSpec, YamlError> {
        const KEYS: &[&str] = &[
            "strategy",
            "canary",
            "steps",
            "timeout",
            "require",
            "rollback",
            "on_bmc_failure",
        ];
        let mut r = RolloutSpec::default();
        for (key, _, v) in self.mapping(node, path, Some(KEYS))? {
            let p = format!("{path}.{key}");
            match key {
                "strategy" => r.strategy = Some(self.string(&p, v)?),
                "canary" => r.canary = Some(self.json(&p, v)?),
                "steps" => r.steps = Some(self.json(&p, v)?),
                "timeout" => r.timeout = Some(self.string(&p, v)?),
                "require" => r.require = Some(self.string(&p, v)?),
                "on_bmc_failure" => r.on_bmc_failure = Some(self.string(&p, v)?),
                _ => r.rollback = Some(self.boolean(&p, v)?),
            }
        }
        Ok(r)
    }

    /// A BMC (`null`: remove it). The password itself has no key: a fleet
    /// file names where it is.
    fn bmc(&mut self, path: &str, node: &MarkedYaml<'_>) -> Result<Option<BmcSpec>, YamlError> {
        if is_null(node) {
            return Ok(None);
        }
        const KEYS: &[&str] = &[
            "protocol",
            "address",
            "system_id",
            "username",
            "password_file",
            "password_env",
            "boot_target",
            "verify_tls",
        ];
        if let YamlData::Mapping(map) = &node.data {
            if let Some((k, _)) = map
                .iter()
                .find(|(k, _)| k.data.as_str() == Some("password"))
            {
                return Err(self.err(
                    k,
                    format!("{path}.password: name where it is (password_file or password_env), not the password"),
                ));
            }
        }
        let mut b = BmcSpec::default();
        for (key, _, v) in self.mapping(node, path, Some(KEYS))? {
            let p = format!("{path}.{key}");
            match key {
                "verify_tls" => b.verify_tls = Some(self.boolean(&p, v)?),
                _ => {
                    let text = self.string(&p, v)?;
                    let slot = match key {
                        "protocol" => &mut b.protocol,
                        "address" => &mut b.address,
                        "system_id" => &mut b.system_id,
                        "username" => &mut b.username,
                        "password_file" => &mut b.password_file,
                        "password_env" => &mut b.password_env,
                        _ => &mut b.boot_target,
                    };
                    *slot = Some(text);
                }
            }
        }
        Ok(Some(b))
    }

    /// `{stream: worker, generation: 42}`.
    fn generation_ref(&mut self, path: &str, node: &MarkedYaml<'_>) -> Result<PinSpec, YamlError> {
        let mut stream = None;
        let mut generation = None;
        for (key, _, v) in self.mapping(node, path, Some(&["stream", "generation"]))? {
            let p = format!("{path}.{key}");
            if key == "stream" {
                stream = Some(self.string(&p, v)?);
            } else {
                generation = Some(self.integer(&p, v)?);
            }
        }
        self.mark(path, node);
        match (stream, generation) {
            (Some(stream), Some(generation)) => Ok(PinSpec { stream, generation }),
            _ => Err(self.err(node, format!("{path}: needs both stream and generation"))),
        }
    }

    fn machine(&mut self, mac: &str, node: &MarkedYaml<'_>) -> Result<MachineSpec, YamlError> {
        let mut m = MachineSpec::default();
        if is_null(node) {
            return Ok(m);
        }
        const KEYS: &[&str] = &["hostname", "labels", "group", "pin", "kind", "bmc"];
        let what = format!("machine {mac}");
        for (key, k, v) in self.mapping(node, &what, Some(KEYS))? {
            let path = machine_path(mac, Some(key));
            match key {
                "hostname" => {
                    let h = self.nullable_string(&path, v)?;
                    if let Some(h) = &h {
                        check_hostname(h).map_err(|e| self.err(v, format!("{path}: {e}")))?;
                    }
                    m.hostname = Some(h);
                }
                "labels" => {
                    self.mark(&path, k);
                    let mut labels = BTreeMap::new();
                    if !is_null(v) {
                        for (lk, lkn, lv) in self.mapping(v, &path, None)? {
                            let lp = format!("{path}.{lk}");
                            check_label_part(lk)
                                .map_err(|e| self.err(lkn, format!("{lp}: {e}")))?;
                            self.mark(&lp, lv);
                            // `rack: 1` means the label value "1".
                            let value = match &lv.data {
                                YamlData::Value(Scalar::Integer(i)) => i.to_string(),
                                YamlData::Value(Scalar::Boolean(b)) => b.to_string(),
                                _ => self.string(&lp, lv)?,
                            };
                            check_label_part(&value)
                                .map_err(|e| self.err(lv, format!("{lp}: {e}")))?;
                            labels.insert(lk.to_string(), value);
                        }
                    }
                    m.labels = Some(labels);
                }
                "group" => {
                    let g = self.nullable_string(&path, v)?;
                    if let Some(g) = &g {
                        check_group_name(g)
                            .map_err(|e| self.err(v, format!("{path}: group {e}")))?;
                    }
                    m.group = Some(g);
                }
                "pin" => {
                    if is_null(v) {
                        self.mark(&path, v);
                        m.pin = Some(None);
                        continue;
                    }
                    let pin = self.generation_ref(&path, v)?;
                    self.mark(&path, k);
                    m.pin = Some(Some(pin));
                }
                "bmc" => {
                    m.bmc = Some(self.bmc(&path, v)?);
                    self.mark(&path, k);
                }
                _ => {
                    let kind = self.string(&path, v)?;
                    kind.parse::<crate::domain::MachineKind>()
                        .map_err(|e| self.err(v, format!("{path}: {e}")))?;
                    m.kind = Some(kind);
                }
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_line_and_column() {
        let cases: &[(&str, &str)] = &[
            (
                "groups:\n  web:\n    selecter: role=web\n",
                "3:5: unknown key \"selecter\" in group \"web\" (expected one of description, selector, variables, stream, generation, generations, rollout, bmc)",
            ),
            (
                "group:\n  web: {}\n",
                "1:1: unknown key \"group\" in the top level (expected one of groups, machines)",
            ),
            (
                "groups:\n  web:\n    stream: worker\n    generation: \"42\"\n",
                "4:17: groups.web.generation: expected a whole number, found a string (\"42\")",
            ),
            (
                "groups:\n  web:\n    selector: \"role in (a\"\n",
                "3:15: groups.web.selector: selector column 11: expected ',' or ')', found the end",
            ),
            (
                "machines:\n  \"52:54:00:12:34\":\n    hostname: a\n",
                "2:3: invalid MAC address \"52:54:00:12:34\": expected six hex octets like 52:54:00:12:34:56",
            ),
            (
                "machines:\n  52:54:00:12:34:56:\n    labels: {role: \"a b\"}\n",
                "3:20: machines.52:54:00:12:34:56.labels.role: label \"a b\": 1-63 letters, digits, '-', '_', '.', '/' or ':'",
            ),
            (
                "machines:\n  52:54:00:12:34:56:\n    pin: {stream: worker}\n",
                "3:10: machines.52:54:00:12:34:56.pin: needs both stream and generation",
            ),
            (
                "groups:\n  web:\n    stream: worker\n",
                "3:5: group \"web\": stream without generation",
            ),
            (
                "groups:\n  web:\n    rollout: {canary: 1, stepz: [50%]}\n",
                "3:26: unknown key \"stepz\" in groups.web.rollout (expected one of strategy, canary, steps, timeout, require, rollback, on_bmc_failure)",
            ),
            ("groups: [web]\n", "1:9: groups: expected a mapping, found a list"),
            (
                "groups:\n  web:\n    stream: worker\n    generation: 1\n    generations: []\n",
                "3:5: group \"web\": give stream and generation, or generations, not both",
            ),
            (
                "groups:\n  web:\n    generations: [{stream: worker}]\n",
                "3:19: groups.web.generations.0: needs both stream and generation",
            ),
            (
                "groups:\n  \"bad name\": {}\n",
                "2:3: group \"bad name\" must be 1-63 letters, digits, '-', '_' or '.'",
            ),
            (
                "machines:\n  52:54:00:12:34:56:\n    kind: router\n",
                "3:11: machines.52:54:00:12:34:56.kind: unknown machine kind \"router\" (server, switch)",
            ),
            (
                "groups:\n  web: {}\n  web: {}\n",
                "3:3: duplicated key in mapping",
            ),
            ("groups: {web: [}\n", "1:16: "),
        ];
        for (text, want) in cases {
            let got = error(text);
            assert!(got.starts_with(want), "{text:?}\n got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn a_file_becomes_a_document_and_spans() {
        let text = "\
groups:
  web:
    description: front-end servers
    selector: \"role=web\"
    variables: {ntp: 10.0.0.1, workers: 4}
    stream: worker
    generation: 42
    rollout: {canary: 1, steps: [50%, 100%], timeout: 10m}
  old:
    selector: null
machines:
  52-54-00-12-34-56:
    hostname: node7
    labels: {role: web, rack: 1}
    group: web
    pin: null
";
        let (doc, spans) = parse(text).unwrap();
        let web = &doc.groups["web"];
        assert_eq!(web.selector, Some(Some("role=web".into())));
        assert_eq!(web.variables.as_ref().unwrap()["workers"], 4);
        assert_eq!(
            web.rollout.as_ref().unwrap().steps,
            Some(serde_json::json!(["50%", "100%"]))
        );
        assert_eq!(doc.groups["old"].selector, Some(None));
        let m = &doc.machines["52:54:00:12:34:56"];
        assert_eq!(m.labels.as_ref().unwrap()["rack"], "1");
        assert_eq!(m.pin, Some(None));
        assert_eq!(m.group, Some(Some("web".into())));
        let pos = |p: &str| spans.find(p).map(|p| p.to_string());
        assert_eq!(pos("groups.web.stream").as_deref(), Some("6:13"));
        assert_eq!(pos("groups.web.variables.loader").as_deref(), Some("5:5"));
        assert_eq!(
            pos("machines.52:54:00:12:34:56.group").as_deref(),
            Some("15:12")
        );
        assert_eq!(pos("machines.52:54:00:12:34:56").as_deref(), Some("12:3"));
        // The JSON the CLI sends, and back: the same document.
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["groups"]["old"]["selector"], Value::Null);
        assert!(json["groups"]["web"].get("hostname").is_none());
        let back: Document = serde_json::from_value(json).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../../examples/fleet.yaml");
        let (doc, _) = parse(text).unwrap();
        assert!(doc.groups.contains_key("web"), "{doc:?}");
        assert!(!doc.machines.is_empty());
    }

    #[test]
    fn an_empty_file_is_an_empty_document() {
        assert_eq!(parse("").unwrap().0, Document::default());
        assert_eq!(parse("# nothing\n").unwrap().0, Document::default());
        assert_eq!(parse("groups:\n").unwrap().0, Document::default());
    }
}
