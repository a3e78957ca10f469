//! Escaping by output language: every value a template writes is made
//! inert for the language of the file it lands in, by default. A template
//! author who means to insert text raw marks it `{{ value | safe }}`.
//!
//! One table says which language a template is in ([`Language::of`]); one
//! function per language says how a value is written ([`write`]). What a
//! language cannot carry safely is refused: the render fails, the machine
//! is served the "failed to render" answer and the operator an event naming
//! the value (never a half-escaped file).
//!
//! | language | templates | a value is written |
//! | --- | --- | --- |
//! | iPXE | `*.ipxe` | as is, but a word that iPXE would read as `;`, `\|\|`, `&&` or a `#` comment, and `${`, are percent-encoded; control characters refused |
//! | kernel command line | image cmdlines | as one argument: whitespace, `"`, `$`, `#`, `\`, `'` percent-encoded; control characters refused |
//! | GRUB | `grub/*`, `*.cfg` | every character but `A-Z a-z 0-9 . _ : / = , + @ -`, space, `(` and `)` percent-encoded: the same words bare or inside the template's quotes; control characters refused |
//! | shell | `*.sh` | every character but `A-Z a-z 0-9 . _ : / = , + @ -` percent-encoded (a space too: `VAR=a b` would run `b`); control characters refused (a newline would end a comment) |
//! | YAML | cloud-init's `user-data`, `meta-data`, `vendor-data`, `network-config`, `*.yaml`, `*.yml` | a plain scalar if it is one harmless word, else a double-quoted JSON string (valid YAML) |
//! | JSON | `*.json` | JSON-encoded (strings quoted): write `"{{ x }}"` as `{{ x }}` |
//! | text | anything else | as is; control characters refused |

use std::fmt::Write as _;

use minijinja::value::Value;
use minijinja::{Error, ErrorKind, Output, State};

/// The output language of a template, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Ipxe,
    Cmdline,
    Grub,
    Shell,
    Yaml,
    Json,
    Text,
}

/// The cloud-init NoCloud files, which are YAML whatever their name says.
const NOCLOUD_YAML: [&str; 4] = [
    "config/user-data",
    "config/meta-data",
    "config/vendor-data",
    "config/network-config",
];

impl Language {
    /// The one place that maps a template name to its language.
    pub fn of(name: &str) -> Language {
        let ext = |e: &str| name.ends_with(e);
        if ext(".cmdline.ipxe") {
            Language::Cmdline
        } else if ext(".ipxe") {
            Language::Ipxe
        } else if name.starts_with("grub/") || ext(".cfg") {
            Language::Grub
        } else if ext(".sh") {
            Language::Shell
        } else if ext(".json") {
            Language::Json
        } else if ext(".yaml") || ext(".yml") || NOCLOUD_YAML.contains(&name) {
            Language::Yaml
        } else {
            Language::Text
        }
    }

    /// The name minijinja's auto-escape carries for it.
    pub fn tag(self) -> &'static str {
        match self {
            Language::Ipxe => "ipxe",
            Language::Cmdline => "cmdline",
            Language::Grub => "grub",
            Language::Shell => "shell",
            Language::Yaml => "yaml",
            Language::Json => "json",
            Language::Text => "text",
        }
    }

    fn from_tag(tag: &str) -> Option<Language> {
        [
            Language::Ipxe,
            Language::Cmdline,
            Language::Grub,
            Language::Shell,
            Language::Yaml,
            Language::Json,
            Language::Text,
        ]
        .into_iter()
        .find(|l| l.tag() == tag)
    }
}

/// minijinja's formatter: writes `value` escaped for the template's
/// language (a value marked safe is written as is).
pub fn formatter(out: &mut Output<'_>, state: &State<'_, '_>, value: &Value) -> Result<(), Error> {
    let language = match state.auto_escape() {
        minijinja::AutoEscape::Custom(tag) => Language::from_tag(tag),
        _ => None,
    };
    let Some(language) = language else {
        return minijinja::escape_formatter(out, state, value);
    };
    if value.is_safe() {
        return out.write_str(&value.to_string()).map_err(write_failed);
    }
    if value.is_undefined() || value.is_none() {
        // Strict undefined already failed; `none` renders as nothing.
        return Ok(());
    }
    let text = escape(language, value)?;
    out.write_str(&text).map_err(write_failed)
}

fn write_failed(e: std::fmt::Error) -> Error {
    Error::new(ErrorKind::WriteFailure, e.to_string())
}

fn refused(text: &str, why: &str) -> Error {
    let shown: String = text.chars().take(64).collect();
    Error::new(
        ErrorKind::InvalidOperation,
        format!("value {shown:?} {why}"),
    )
}

/// `value` written for `language`.
pub fn escape(language: Language, value: &Value) -> Result<String, Error> {
    if language == Language::Json {
        return serde_json::to_string(value)
            .map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()));
    }
    let text = value.to_string();
    if language == Language::Yaml {
        return Ok(yaml(&text));
    }
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(refused(
            &text,
            &format!(
                "contains control character {c:?}, refused in {}",
                language.tag()
            ),
        ));
    }
    Ok(match language {
        Language::Ipxe => ipxe(&text),
        Language::Cmdline => percent(&text, |c| {
            c.is_whitespace() || matches!(c, '"' | '\'' | '$' | '#' | '\\' | '%')
        }),
        // A GRUB word may hold spaces (GRUB has no `VAR=x cmd` form, so a
        // space only splits arguments); a shell word may not.
        Language::Grub => percent(&text, |c| !(is_bare(c) || " ()".contains(c))),
        Language::Shell => percent(&text, |c| !is_bare(c)),
        Language::Text => text,
        Language::Json | Language::Yaml => unreachable!("handled above"),
    })
}

/// iPXE has no quoting. A line is split into words at whitespace, `${…}`
/// is expanded first, and a word that is `;`, `||` or `&&` ends a command,
/// one that starts with `#` a line: those are made ordinary words.
fn ipxe(text: &str) -> String {
    let text = text.replace("${", "$%7B");
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        match word.as_str() {
            ";" | "||" | "&&" => out.push_str(&percent(word, |_| true)),
            w if w.starts_with('#') => {
                out.push_str("%23");
                out.push_str(&w[1..]);
            }
            w => out.push_str(w),
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_whitespace() {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// `%XX` for every byte of a character `encode` picks.
fn percent(text: &str, encode: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if encode(c) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters that mean nothing to a POSIX shell or to GRUB's script
/// parser, anywhere in a word and inside single or double quotes alike
/// (`~` and `%` excluded: `~` expands at a word's start, `%` is kept for
/// the encoding).
fn is_bare(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._:/=,+@-".contains(c)
}

/// A YAML plain scalar when the text is one harmless word, else a
/// double-quoted JSON string (which YAML reads back exactly).
fn yaml(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/:@+=-".contains(c))
        && !text.starts_with(['-', ':', '@'])
        && !text.ends_with(':')
        && !matches!(
            text.to_ascii_lowercase().as_str(),
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
        );
    if plain {
        text.to_string()
    } else {
        serde_json::to_string(text).expect("a string serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_template_has_one_language() {
        let table = [
            ("boot.ipxe", Language::Ipxe),
            ("ipxe/machine.ipxe", Language::Ipxe),
            ("3.cmdline.ipxe", Language::Cmdline),
            ("grub/machine.cfg", Language::Grub),
            ("grub/grub.cfg", Language::Grub),
            ("ztp/cumulus.sh", Language::Shell),
            ("ztp/ztp.json", Language::Json),
            ("config/ignition.json", Language::Json),
            ("config/user-data", Language::Yaml),
            ("config/meta-data", Language::Yaml),
            ("config/network-config", Language::Yaml),
            ("config/extra.yaml", Language::Yaml),
            ("config/motd", Language::Text),
        ];
        for (name, language) in table {
            assert_eq!(Language::of(name), language, "{name}");
        }
    }

    #[test]
    fn ordinary_values_are_written_as_they_are() {
        let v = |s: &str| Value::from(s);
        for language in [
            Language::Ipxe,
            Language::Grub,
            Language::Shell,
            Language::Yaml,
        ] {
            for plain in [
                "node1",
                "52:54:00:00:d0:01",
                "http://10.77.0.1:8080/config/ab/",
            ] {
                assert_eq!(escape(language, &v(plain)).unwrap(), plain, "{language:?}");
            }
        }
        assert_eq!(
            escape(Language::Ipxe, &v("VMware-56 4d 2a")).unwrap(),
            "VMware-56 4d 2a"
        );
        assert_eq!(
            escape(Language::Cmdline, &v("VMware-56 4d")).unwrap(),
            "VMware-56%204d"
        );
        assert_eq!(escape(Language::Json, &v("node1")).unwrap(), "\"node1\"");
        assert_eq!(escape(Language::Json, &Value::from(7)).unwrap(), "7");
        assert_eq!(escape(Language::Yaml, &v("true")).unwrap(), "\"true\"");
        assert_eq!(escape(Language::Grub, &v("a b")).unwrap(), "a b");
        assert_eq!(
            escape(Language::Grub, &v("it's $x")).unwrap(),
            "it%27s %24x"
        );
        assert_eq!(escape(Language::Shell, &v("a b;c")).unwrap(), "a%20b%3Bc");
    }
}
