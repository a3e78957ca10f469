//! `--max-size`: a byte count as operators write it, `50G`, `512M`, `1T`,
//! `4096`. Suffixes are binary (K = 1024) and case-insensitive, an optional
//! trailing `B` or `iB` is accepted (`50GiB`, `512MB`); fractions are not.

/// Why a size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a size like 50G, 512M, 1T or a number of bytes")]
pub struct BadSize(pub String);

/// Bytes in `text`; zero is refused (a cache that holds nothing).
pub fn parse_size(text: &str) -> Result<u64, BadSize> {
    let bad = || BadSize(text.to_string());
    let t = text.trim().to_ascii_uppercase();
    let t = t
        .strip_suffix("IB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(&t);
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let bytes = n.checked_mul(1 << shift).ok_or_else(bad)?;
    if bytes == 0 {
        return Err(bad());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_operators_write_them() {
        let table = [
            ("4096", Some(4096)),
            ("1K", Some(1 << 10)),
            ("512M", Some(512 << 20)),
            ("512m", Some(512 << 20)),
            ("50G", Some(50 << 30)),
            ("50GiB", Some(50 << 30)),
            ("50GB", Some(50 << 30)),
            (" 1T ", Some(1 << 40)),
            ("4096B", Some(4096)),
            ("0", None),
            ("0G", None),
            ("", None),
            ("G", None),
            ("1.5G", None),
            ("-1G", None),
            ("10P", None),
            ("5 G", None),
            ("99999999999T", None),
        ];
        for (text, want) in table {
            assert_eq!(parse_size(text).ok(), want, "{text:?}");
        }
    }
}
