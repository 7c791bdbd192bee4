//! The cron schedules of disruption budgets, read the way Karpenter reads them: robfig/cron v3's
//! `ParseStandard` on `"TZ=UTC " + schedule`, so always in UTC.
//!
//! Five whitespace-separated fields, `minute hour day-of-month month day-of-week`, or one of the
//! macros `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`) and `@hourly`
//! (case-sensitive, as in robfig). A field is a comma-separated list of `*` (or `?`), `N`, `A-B`,
//! each optionally followed by `/STEP`; `N/STEP` means `N-max/STEP`. Months take the names
//! JAN-DEC and days of the week SUN-SAT, in any case. Like robfig, and unlike some crons, the day
//! of the week goes from 0 (Sunday) to 6: `7` is refused (Karpenter fails closed on it and blocks
//! every disruption). Neither seconds, years, `L`, `W`, `#`, `@every` nor a `TZ=` prefix are
//! accepted: Karpenter's parser refuses them too.
//!
//! The days follow robfig's rule: when the day-of-month or the day-of-week field is written as a
//! star (`*` or `?`, possibly in a list, with no step above 1) a day must match both; when both are
//! restricted a day matching either fires (`0 0 1 * MON` fires on the 1st and on every Monday).
//!
//! What robfig accepts and Karpenter would silently misread is still parsed here (so that the
//! runtime behaves like Karpenter), but [`Schedule::fires`] tells it: a schedule with no minute
//! that ever matches (`0 0 30 2 *`) makes Karpenter treat the budget as always active.

use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::Offset;

/// A parsed cron schedule: one bit per allowed value of each field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Bits 0..=59.
    minutes: u64,
    /// Bits 0..=23.
    hours: u64,
    /// Bits 1..=31.
    days: u64,
    /// Bits 1..=12.
    months: u64,
    /// Bits 0..=6, Sunday = 0.
    weekdays: u64,
    /// robfig's star bit on either day field: a day must then match both fields, else either.
    days_match_both: bool,
    /// Whether any minute ever matches (see [`Schedule::fires`]).
    fires: bool,
}

/// The range and names of one field.
struct Field {
    what: &'static str,
    min: u32,
    max: u32,
    /// Names for `min`, `min + 1`, ... (lower case).
    names: &'static [&'static str],
}

const MINUTE: Field = Field {
    what: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    what: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: Field = Field {
    what: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    what: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const DAY_OF_WEEK: Field = Field {
    what: "day-of-week",
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

/// The days each month can have (February 29 in leap years).
const MONTH_DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

impl Schedule {
    /// Parses a budget's `schedule`; the error says which field is wrong and why.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let spec = text.trim();
        if spec.is_empty() {
            return Err("the schedule is empty".to_owned());
        }
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            return Err(
                "time zones are not supported: Karpenter evaluates schedules in UTC".to_owned(),
            );
        }
        if spec.starts_with('@') {
            return Self::macro_named(spec);
        }
        let fields: Vec<&str> = spec.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            ));
        };
        let (minutes, _) = field(minute, &MINUTE)?;
        let (hours, _) = field(hour, &HOUR)?;
        let (days, day_star) = field(day, &DAY_OF_MONTH)?;
        let (months, _) = field(month, &MONTH)?;
        let (weekdays, weekday_star) = field(weekday, &DAY_OF_WEEK)?;
        Ok(Self::new(
            minutes,
            hours,
            days,
            months,
            weekdays,
            day_star || weekday_star,
        ))
    }

    fn macro_named(spec: &str) -> Result<Schedule, String> {
        let all = |f: &Field| bits(f.min, f.max, 1);
        let (minutes, hours, days, months, weekdays) = match spec {
            "@yearly" | "@annually" => (1, 1, 1 << 1, 1 << 1, all(&DAY_OF_WEEK)),
            "@monthly" => (1, 1, 1 << 1, all(&MONTH), all(&DAY_OF_WEEK)),
            "@weekly" => (1, 1, all(&DAY_OF_MONTH), all(&MONTH), 1),
            "@daily" | "@midnight" => (1, 1, all(&DAY_OF_MONTH), all(&MONTH), all(&DAY_OF_WEEK)),
            "@hourly" => (
                1,
                all(&HOUR),
                all(&DAY_OF_MONTH),
                all(&MONTH),
                all(&DAY_OF_WEEK),
            ),
            _ => {
                return Err(format!(
                    "unknown macro {spec:?}: expected @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"
                ));
            }
        };
        // robfig marks the full fields of a macro with its star bit: days must match both.
        Ok(Self::new(minutes, hours, days, months, weekdays, true))
    }

    fn new(
        minutes: u64,
        hours: u64,
        days: u64,
        months: u64,
        weekdays: u64,
        days_match_both: bool,
    ) -> Schedule {
        // Every month has every day of the week (over the years, on each of its days), so a day
        // of some chosen month exists iff its day-of-month fits that month.
        let month_has_day = (1..=12u32)
            .filter(|m| months & (1 << m) != 0)
            .any(|m| days & bits(1, MONTH_DAYS[m as usize - 1], 1) != 0);
        let some_day = if days_match_both {
            month_has_day && weekdays != 0
        } else {
            months != 0 && (month_has_day || weekdays != 0)
        };
        Schedule {
            minutes,
            hours,
            days,
            months,
            weekdays,
            days_match_both,
            fires: minutes != 0 && hours != 0 && some_day,
        }
    }

    /// Whether the schedule ever fires. One that never does (`0 0 30 2 *`, February 30th) is
    /// accepted by Karpenter's parser, and Karpenter then treats its budget as always active
    /// (robfig's `Next` returns the zero time, which is not after now); config validation refuses
    /// it.
    pub fn fires(&self) -> bool {
        self.fires
    }

    /// The latest time the schedule fired at or before `now`, if it is no earlier than
    /// `now - horizon` (both ends inclusive). Fire times are whole minutes, UTC.
    ///
    /// The search walks back a day at a time, so it costs a few steps per day of `horizon` at
    /// worst and stops at the first fire found.
    pub fn last_fire_at_or_before(&self, now: Timestamp, horizon: Duration) -> Option<Timestamp> {
        if !self.fires {
            return None;
        }
        let earliest = now.checked_sub(horizon).unwrap_or(Timestamp::MIN);
        let civil = Offset::UTC.to_datetime(now);
        let mut date = civil.date();
        let mut until = (civil.hour() as u32, civil.minute() as u32);
        loop {
            if self.day_matches(date)
                && let Some((hour, minute)) = self.latest_in_day(until)
            {
                let fire = date.at(hour as i8, minute as i8, 0, 0);
                let fire = Offset::UTC.to_timestamp(fire).ok()?;
                return (fire >= earliest).then_some(fire);
            }
            let start = Offset::UTC.to_timestamp(date.at(0, 0, 0, 0)).ok()?;
            if start <= earliest {
                return None;
            }
            date = date.yesterday().ok()?;
            until = (23, 59);
        }
    }

    fn day_matches(&self, date: Date) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let day = self.days & (1 << date.day()) != 0;
        let weekday = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.days_match_both {
            day && weekday
        } else {
            day || weekday
        }
    }

    /// The latest hour and minute of a matching day at or before `until`.
    fn latest_in_day(&self, (hour, minute): (u32, u32)) -> Option<(u32, u32)> {
        if self.hours & (1 << hour) != 0
            && let Some(m) = highest(self.minutes & at_or_below(minute))
        {
            return Some((hour, m));
        }
        let earlier = hour.checked_sub(1)?;
        let h = highest(self.hours & at_or_below(earlier))?;
        Some((h, highest(self.minutes)?))
    }
}

/// One field: its bits, and robfig's star bit (`*` or `?` with no step above 1 somewhere in it).
fn field(text: &str, f: &Field) -> Result<(u64, bool), String> {
    let mut all = 0;
    let mut star = false;
    // robfig skips empty list items (`1,,2` is `1,2`); an empty field matches nothing.
    for expr in text.split(',').filter(|e| !e.is_empty()) {
        let (b, s) = range(expr, f).map_err(|why| {
            if expr == text {
                format!("{} field {text:?}: {why}", f.what)
            } else {
                format!("{} field {text:?}, {expr:?}: {why}", f.what)
            }
        })?;
        all |= b;
        star |= s;
    }
    Ok((all, star))
}

/// `*`, `N`, `A-B`, each with an optional `/STEP`, as robfig's `getRange` reads them.
fn range(expr: &str, f: &Field) -> Result<(u64, bool), String> {
    let mut slashes = expr.split('/');
    let range = slashes.next().unwrap_or_default();
    let step = slashes.next();
    if slashes.next().is_some() {
        return Err("too many slashes".to_owned());
    }
    let bounds: Vec<&str> = range.split('-').collect();
    let (start, mut end, mut star) = match bounds[..] {
        // robfig ignores what follows `*-`; so does this.
        ["*" | "?", ..] => (f.min, f.max, true),
        [single] => {
            let n = value(single, f)?;
            (n, n, false)
        }
        [low, high] => (value(low, f)?, value(high, f)?, false),
        _ => return Err("too many hyphens".to_owned()),
    };
    let step = match step {
        None => 1,
        Some(text) => {
            let step = number(text)?;
            if bounds.len() == 1 {
                end = f.max;
            }
            if step > 1 {
                star = false;
            }
            step
        }
    };
    if start < f.min || start > f.max {
        return Err(format!("{start} is out of range {}-{}", f.min, f.max) + hint(start, f));
    }
    if end > f.max {
        return Err(format!("{end} is out of range {}-{}", f.min, f.max) + hint(end, f));
    }
    if start > end {
        return Err(format!("the range starts at {start}, after its end {end}"));
    }
    if step == 0 {
        return Err("the step must be a positive number".to_owned());
    }
    Ok((bits(start, end, step), star))
}

fn hint(value: u32, f: &Field) -> &'static str {
    if f.what == DAY_OF_WEEK.what && value == 7 {
        " (Sunday is 0: Karpenter's cron does not take 7)"
    } else {
        ""
    }
}

/// A number or, where the field has them, a name (any case).
fn value(text: &str, f: &Field) -> Result<u32, String> {
    if text.is_empty() {
        return Err("a number is missing".to_owned());
    }
    let lower = text.to_ascii_lowercase();
    match f.names.iter().position(|n| *n == lower) {
        Some(i) => Ok(f.min + i as u32),
        None => number(text).map_err(|why| {
            if f.names.is_empty() || text.starts_with(|c: char| c.is_ascii_digit()) {
                why
            } else {
                format!(
                    "{text:?} is neither a number nor one of {}",
                    f.names.join(", ").to_ascii_uppercase()
                )
            }
        }),
    }
}

/// A non-negative number (Go's `strconv.Atoi`, which takes a leading `+`).
fn number(text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .map_err(|_| format!("{text:?} is not a number"))
}

/// Bits `start`, `start + step`, ... up to `end` (at most 63).
fn bits(start: u32, end: u32, step: u32) -> u64 {
    (start..=end)
        .step_by(step as usize)
        .fold(0, |acc, i| acc | (1 << i))
}

/// The bits 0..=n.
fn at_or_below(n: u32) -> u64 {
    u64::MAX >> (63 - n)
}

fn highest(bits: u64) -> Option<u32> {
    (bits != 0).then(|| 63 - bits.leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

    fn last(schedule: &str, now: &str) -> Option<Timestamp> {
        Schedule::parse(schedule)
            .unwrap()
            .last_fire_at_or_before(at(now), WEEK)
    }

    #[test]
    fn fields_parse_to_the_values_robfig_reads() {
        let s = Schedule::parse("5,10-20/5 */6 1-31/10 jan-MAR,Dec mon-wed,Sat").unwrap();
        assert_eq!(s.minutes, 1 << 5 | 1 << 10 | 1 << 15 | 1 << 20);
        assert_eq!(s.hours, 1 | 1 << 6 | 1 << 12 | 1 << 18);
        assert_eq!(s.days, 1 << 1 | 1 << 11 | 1 << 21 | 1 << 31);
        assert_eq!(s.months, 0b1110 | 1 << 12);
        assert_eq!(s.weekdays, 0b1001110);
        assert!(!s.days_match_both);
        // `N/STEP` runs to the field's maximum.
        assert_eq!(Schedule::parse("50/3 * * * *").unwrap().minutes, {
            1 << 50 | 1 << 53 | 1 << 56 | 1 << 59
        });
        // `*/1` keeps the star, `*/2` does not; `?` is a star.
        assert!(Schedule::parse("0 0 */1 * 1").unwrap().days_match_both);
        assert!(!Schedule::parse("0 0 */2 * 1").unwrap().days_match_both);
        assert!(Schedule::parse("0 0 1 * ?").unwrap().days_match_both);
        // Whitespace is any, around and between.
        assert_eq!(
            Schedule::parse("  0\t9 * *  1-5 ").unwrap(),
            Schedule::parse("0 9 * * MON-FRI").unwrap()
        );
    }

    #[test]
    fn macros_are_their_five_field_forms() {
        for (name, fields) in [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@hourly", "0 * * * *"),
        ] {
            assert_eq!(
                Schedule::parse(name).unwrap(),
                Schedule::parse(fields).unwrap(),
                "{name}"
            );
        }
    }

    #[test]
    fn errors_name_the_field_and_the_reason() {
        for (text, message) in [
            ("", "the schedule is empty"),
            (
                "0 9 * *",
                "expected 5 fields (minute hour day-of-month month day-of-week), found 4",
            ),
            (
                "0 0 9 * * *",
                "expected 5 fields (minute hour day-of-month month day-of-week), found 6",
            ),
            ("61 * * * *", "minute field \"61\": 61 is out of range 0-59"),
            ("* 24 * * *", "hour field \"24\": 24 is out of range 0-23"),
            (
                "* * 0 * *",
                "day-of-month field \"0\": 0 is out of range 1-31",
            ),
            ("* * * 13 *", "month field \"13\": 13 is out of range 1-12"),
            (
                "* * * * 1-7",
                "day-of-week field \"1-7\": 7 is out of range 0-6 (Sunday is 0: Karpenter's cron does not take 7)",
            ),
            (
                "*/0 * * * *",
                "minute field \"*/0\": the step must be a positive number",
            ),
            (
                "5-1 * * * *",
                "minute field \"5-1\": the range starts at 5, after its end 1",
            ),
            ("1-2-3 * * * *", "minute field \"1-2-3\": too many hyphens"),
            ("*/2/3 * * * *", "minute field \"*/2/3\": too many slashes"),
            (
                "0,x * * * *",
                "minute field \"0,x\", \"x\": \"x\" is not a number",
            ),
            (
                "0 9 * * mon-fry",
                "day-of-week field \"mon-fry\": \"fry\" is neither a number nor one of SUN, MON, TUE, WED, THU, FRI, SAT",
            ),
            (
                "0 9 * june *",
                "month field \"june\": \"june\" is neither a number nor one of JAN",
            ),
            (
                "0 9 * * -1",
                "day-of-week field \"-1\": a number is missing",
            ),
            (
                "0 9 * * 1-",
                "day-of-week field \"1-\": a number is missing",
            ),
            ("@sometimes", "unknown macro \"@sometimes\""),
            ("@every 1h", "unknown macro \"@every 1h\""),
            ("@Daily", "unknown macro \"@Daily\""),
            ("TZ=UTC 0 9 * * *", "time zones are not supported"),
            (
                "CRON_TZ=Europe/Paris 0 9 * * *",
                "time zones are not supported",
            ),
            ("0 0 9 * * ? 2025", "expected 5 fields"),
            (
                "0 9 L * *",
                "day-of-month field \"L\": \"L\" is not a number",
            ),
        ] {
            match Schedule::parse(text) {
                Ok(s) => panic!("{text:?} parsed: {s:?}"),
                Err(e) => assert!(e.starts_with(message), "{text:?}: {e}"),
            }
        }
    }

    #[test]
    fn a_schedule_that_never_fires_is_told() {
        for text in [
            "0 0 30 2 *",
            "0 0 31 4,6,9,11 *",
            "0 0 , * *",
            "0 0 31 feb ?",
        ] {
            let s = Schedule::parse(text).unwrap();
            assert!(!s.fires(), "{text}");
            assert_eq!(
                s.last_fire_at_or_before(at("2025-06-01T00:00:00Z"), WEEK * 1000),
                None
            );
        }
        // With a restricted day of the week the OR rule makes it fire on those days.
        for text in ["0 0 30 2 mon", "0 0 29 2 *", "0 0 31 1-2 *", "@yearly"] {
            assert!(Schedule::parse(text).unwrap().fires(), "{text}");
        }
    }

    #[test]
    fn the_last_fire_is_found_within_the_horizon() {
        // 2025-06-04 is a Wednesday.
        let weekdays = "0 9 * * 1-5";
        assert_eq!(
            last(weekdays, "2025-06-04T12:34:56Z"),
            Some(at("2025-06-04T09:00:00Z"))
        );
        assert_eq!(
            last(weekdays, "2025-06-04T09:00:00Z"),
            Some(at("2025-06-04T09:00:00Z"))
        );
        assert_eq!(
            last(weekdays, "2025-06-04T08:59:59.999Z"),
            Some(at("2025-06-03T09:00:00Z"))
        );
        // Sunday 2025-06-08 and Monday before nine: Friday.
        assert_eq!(
            last(weekdays, "2025-06-08T23:00:00Z"),
            Some(at("2025-06-06T09:00:00Z"))
        );
        assert_eq!(
            last(weekdays, "2025-06-09T08:00:00Z"),
            Some(at("2025-06-06T09:00:00Z"))
        );
        // Minute steps: the latest minute of the latest hour at or before now.
        assert_eq!(
            last("*/15 8-10 * * *", "2025-06-04T10:14:00Z"),
            Some(at("2025-06-04T10:00:00Z"))
        );
        assert_eq!(
            last("20,40 8-10 * * *", "2025-06-04T10:10:00Z"),
            Some(at("2025-06-04T09:40:00Z"))
        );
        assert_eq!(
            last("20,40 8-10 * * *", "2025-06-04T07:10:00Z"),
            Some(at("2025-06-03T10:40:00Z"))
        );
        assert_eq!(
            last("@hourly", "2025-06-04T00:00:30Z"),
            Some(at("2025-06-04T00:00:00Z"))
        );
        // Across a year: the first of January fires once a year.
        assert_eq!(
            last("@yearly", "2026-01-03T00:00:00Z"),
            Some(at("2026-01-01T00:00:00Z"))
        );
        assert_eq!(last("@yearly", "2025-12-31T23:59:00Z"), None);
        // The horizon is inclusive at both ends.
        let s = Schedule::parse("0 9 * * *").unwrap();
        let now = at("2025-06-04T08:00:00Z");
        let day = Duration::from_secs(23 * 3600);
        assert_eq!(
            s.last_fire_at_or_before(now, day),
            Some(at("2025-06-03T09:00:00Z"))
        );
        assert_eq!(
            s.last_fire_at_or_before(now, day - Duration::from_secs(1)),
            None
        );
        // Leap days: the last February 29th before 2027 is in 2024.
        let leap = Schedule::parse("0 12 29 2 *").unwrap();
        assert_eq!(
            leap.last_fire_at_or_before(at("2027-01-01T00:00:00Z"), WEEK * 200),
            Some(at("2024-02-29T12:00:00Z"))
        );
        // A horizon too long for jiff's range searches to its start and still finds it.
        assert_eq!(
            leap.last_fire_at_or_before(at("2027-01-01T00:00:00Z"), Duration::MAX),
            Some(at("2024-02-29T12:00:00Z"))
        );
    }

    #[test]
    fn day_of_month_and_day_of_week_follow_robfigs_rule() {
        // Both restricted: either. 2025-06-01 is a Sunday; 2025-06-02 a Monday.
        let either = "0 0 15 * MON";
        assert_eq!(
            last(either, "2025-06-03T00:00:00Z"),
            Some(at("2025-06-02T00:00:00Z"))
        );
        assert_eq!(
            last(either, "2025-06-15T12:00:00Z"),
            Some(at("2025-06-15T00:00:00Z"))
        );
        // The day of the month written as a star: both (every Monday).
        assert_eq!(
            last("0 0 * * MON", "2025-06-15T12:00:00Z"),
            Some(at("2025-06-09T00:00:00Z"))
        );
        // A stepped star is restricted: either (odd days or Mondays); the 14th is even, a Saturday.
        assert_eq!(
            last("0 0 */2 * MON", "2025-06-14T12:00:00Z"),
            Some(at("2025-06-13T00:00:00Z"))
        );
        // `1-31` is not a star: either, so every day.
        assert_eq!(
            last("0 0 1-31 * 1", "2025-06-14T12:00:00Z"),
            Some(at("2025-06-14T00:00:00Z"))
        );
        // The day of the week written as a star: both (the 15th only).
        assert_eq!(
            last("0 0 15 * *", "2025-06-14T12:00:00Z"),
            None // within a week of the 14th there is no 15th
        );
        // Sunday is 0, and `sun` in any case.
        for text in ["0 0 * * 0", "0 0 * * SUN", "0 0 * * Sun", "@weekly"] {
            assert_eq!(
                last(text, "2025-06-07T23:59:00Z"),
                Some(at("2025-06-01T00:00:00Z")),
                "{text}"
            );
        }
    }

    #[test]
    fn months_restrict_and_cross_the_year() {
        // Only in December: from February the last fire is December's last day, past a week.
        let december = Schedule::parse("30 23 * dec *").unwrap();
        assert_eq!(
            december.last_fire_at_or_before(at("2026-02-01T00:00:00Z"), WEEK * 6),
            Some(at("2025-12-31T23:30:00Z"))
        );
        assert_eq!(
            december.last_fire_at_or_before(at("2026-02-01T00:00:00Z"), WEEK),
            None
        );
        // @monthly across a month boundary.
        assert_eq!(
            last("@monthly", "2025-03-02T00:00:00Z"),
            Some(at("2025-03-01T00:00:00Z"))
        );
        assert_eq!(last("@monthly", "2025-02-28T23:59:59Z"), None);
    }

    #[test]
    fn a_long_horizon_is_cheap() {
        // A week of a schedule that fires once a week on Sunday, asked on Saturday: it walks back
        // the whole week. Ten thousand calls in well under a second even in a debug build.
        let s = Schedule::parse("0 0 * * sun").unwrap();
        let now = at("2025-06-07T23:59:00Z");
        let started = std::time::Instant::now();
        for _ in 0..10_000 {
            assert!(s.last_fire_at_or_before(now, WEEK).is_some());
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}
