//! Minimal UTC time parsing and formatting for audit queries (RFC 3339
//! `YYYY-MM-DDTHH:MM:SS[.fff]Z`, epoch milliseconds, or a relative age such
//! as `15m`), without a calendar dependency.

use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Formats epoch milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub(crate) fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60,
        ms.rem_euclid(1000)
    )
}

/// Parses `--since`: RFC 3339 UTC, a date, epoch ms, or an age (`30s`,
/// `15m`, `2h`, `7d`) counted back from now.
pub(crate) fn parse_since(s: &str, now: i64) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    if let Some(unit) = s.chars().last().filter(char::is_ascii_alphabetic)
        && let Ok(n) = s[..s.len() - 1].parse::<i64>()
    {
        let mult = match unit {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return Err(format!("unknown unit in `{s}`: use s, m, h or d")),
        };
        return Ok(now - n * mult);
    }
    let bad = || {
        format!(
            "cannot read time `{s}`: use RFC 3339 (2026-11-26T10:00:00Z), a date, epoch ms, or an age like 15m"
        )
    };
    let (date, time) = s.split_once('T').unwrap_or((s, "00:00:00Z"));
    let num = |x: &str| x.parse::<i64>().map_err(|_| bad());
    let parts: Vec<&str> = date.split('-').collect();
    let [y, mo, d] = parts.as_slice() else {
        return Err(bad());
    };
    let time = time.strip_suffix('Z').ok_or_else(bad)?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<&str> = hms.split(':').collect();
    let [h, mi, sec] = t.as_slice() else {
        return Err(bad());
    };
    let frac_ms = num(&format!("{:0<3}", &frac[..frac.len().min(3)]))?;
    let days = days_from_civil(num(y)?, num(mo)?, num(d)?);
    Ok(((days * 86_400 + num(h)? * 3600 + num(mi)? * 60 + num(sec)?) * 1000) + frac_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ages() {
        let ms = parse_since("2026-11-26T10:20:30.5Z", 0).unwrap();
        assert_eq!(format_ms(ms), "2026-11-26T10:20:30.500Z");
        assert_eq!(parse_since("1970-01-02", 0).unwrap(), 86_400_000);
        assert_eq!(parse_since("15m", 1_000_000).unwrap(), 1_000_000 - 900_000);
        assert_eq!(parse_since("1234", 0).unwrap(), 1234);
        assert!(parse_since("yesterday", 0).is_err());
    }
}
