//! Go's value syntax for flags: `strconv.ParseBool`, base-0
//! `strconv.ParseUint`/`ParseInt` (`0x1f`, `0o17`, `017`, `1_000`), and the
//! error words Go's `flag` package reports (`parse error`, `value out of
//! range`).

use std::collections::BTreeSet;
use std::time::Duration;

use oxcd_server::config::parse_go_duration;

/// Why a Go integer parse failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NumError {
    Syntax,
    Range,
}

impl NumError {
    /// What Go's `flag` package reports for its own numeric flags.
    pub(crate) fn flag_message(self) -> String {
        match self {
            NumError::Syntax => "parse error".into(),
            NumError::Range => "value out of range".into(),
        }
    }

    /// strconv's own text, which etcd's custom flag types pass through.
    pub(crate) fn strconv_message(self, func: &str, input: &str) -> String {
        let why = match self {
            NumError::Syntax => "invalid syntax",
            NumError::Range => "value out of range",
        };
        format!("strconv.{func}: parsing {}: {why}", go_quote(input))
    }
}

/// Go's `strconv.ParseBool`, reported as the `flag` package does.
pub(crate) fn go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err("parse error".into()),
    }
}

/// Go's `strconv.ParseUint(s, 0, bits)`.
pub(crate) fn go_parse_uint(s: &str, bits: u32) -> Result<u64, NumError> {
    if s.is_empty() {
        return Err(NumError::Syntax);
    }
    let bytes = s.as_bytes();
    let (base, digits): (u64, &str) = if bytes[0] == b'0' && s.len() >= 3 {
        match bytes[1].to_ascii_lowercase() {
            b'b' => (2, &s[2..]),
            b'o' => (8, &s[2..]),
            b'x' => (16, &s[2..]),
            _ => (8, &s[1..]),
        }
    } else if bytes[0] == b'0' {
        (8, &s[1..])
    } else {
        (10, s)
    };
    let max: u64 = if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let mut n: u64 = 0;
    let mut underscores = false;
    for c in digits.chars() {
        if c == '_' {
            underscores = true;
            continue;
        }
        let d = c.to_digit(36).map_or(u64::MAX, u64::from);
        if d >= base {
            return Err(NumError::Syntax);
        }
        n = n
            .checked_mul(base)
            .and_then(|n| n.checked_add(d))
            .filter(|n| *n <= max)
            .ok_or(NumError::Range)?;
    }
    if underscores && !underscore_ok(s) {
        return Err(NumError::Syntax);
    }
    Ok(n)
}

/// Go's `strconv.ParseInt(s, 0, 64)`.
pub(crate) fn go_parse_int(s: &str) -> Result<i64, NumError> {
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let un = go_parse_uint(body, 64)?;
    if neg {
        if un > 1u64 << 63 {
            return Err(NumError::Range);
        }
        #[allow(clippy::cast_possible_wrap)]
        return Ok((un as i64).wrapping_neg());
    }
    i64::try_from(un).map_err(|_| NumError::Range)
}

/// Go's rule for `_` in base-0 literals: only between digits, or between a
/// base prefix and a digit.
fn underscore_ok(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let b = s.as_bytes();
    let mut saw = b'^';
    let mut i = 0;
    let mut hex = false;
    if b.len() >= 2 && b[0] == b'0' && matches!(b[1].to_ascii_lowercase(), b'b' | b'o' | b'x') {
        i = 2;
        saw = b'0';
        hex = b[1].eq_ignore_ascii_case(&b'x');
    }
    for &c in &b[i..] {
        if c.is_ascii_digit() || (hex && c.is_ascii_hexdigit()) {
            saw = b'0';
            continue;
        }
        if c == b'_' {
            if saw != b'0' {
                return false;
            }
            saw = b'_';
            continue;
        }
        if saw == b'_' {
            return false;
        }
        saw = b'!';
    }
    saw != b'_'
}

/// Go `UintVar` semantics.
pub(crate) fn flag_uint(s: &str, bits: u32) -> Result<u64, String> {
    go_parse_uint(s, bits).map_err(NumError::flag_message)
}

/// Go `IntVar` semantics.
pub(crate) fn flag_int(s: &str) -> Result<i64, String> {
    go_parse_int(s).map_err(NumError::flag_message)
}

/// Go `DurationVar` semantics. Negative durations parse in Go but mean
/// nothing for any etcd flag; they are refused the same way as bad syntax.
pub(crate) fn flag_duration(s: &str) -> Result<Duration, String> {
    let ns = parse_go_duration(s).map_err(|_| "parse error".to_string())?;
    u64::try_from(ns)
        .map(Duration::from_nanos)
        .map_err(|_| "parse error".to_string())
}

/// etcd's `UniqueStringsValue`: split on `,`, de-duplicated, sorted.
pub(crate) fn unique_sorted(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::to_string)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Go's `%q` for the strings that show up in flag errors.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_integers() {
        assert_eq!(go_parse_uint("0", 64), Ok(0));
        assert_eq!(go_parse_uint("100000", 64), Ok(100_000));
        assert_eq!(go_parse_uint("0x10", 64), Ok(16));
        assert_eq!(go_parse_uint("010", 64), Ok(8));
        assert_eq!(go_parse_uint("0b11", 64), Ok(3));
        assert_eq!(go_parse_uint("1_000", 64), Ok(1000));
        assert_eq!(go_parse_uint("1__0", 64), Err(NumError::Syntax));
        assert_eq!(go_parse_uint("-1", 64), Err(NumError::Syntax));
        assert_eq!(go_parse_uint("abc", 64), Err(NumError::Syntax));
        assert_eq!(go_parse_uint("09", 64), Err(NumError::Syntax));
        assert_eq!(go_parse_uint("4294967296", 32), Err(NumError::Range));
        assert_eq!(go_parse_int("-5"), Ok(-5));
        assert_eq!(go_parse_int("+5"), Ok(5));
        assert_eq!(go_parse_int("-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(go_parse_int("9223372036854775808"), Err(NumError::Range));
        assert_eq!(
            NumError::Range.strconv_message("ParseUint", "99999999999"),
            "strconv.ParseUint: parsing \"99999999999\": value out of range"
        );
    }

    #[test]
    fn go_bools_and_durations() {
        assert_eq!(go_bool("T"), Ok(true));
        assert_eq!(go_bool("0"), Ok(false));
        assert_eq!(go_bool("yes"), Err("parse error".into()));
        assert_eq!(flag_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(flag_duration("5"), Err("parse error".into()));
    }
}
