//! A clock as a backend (feature `clock`; jiff, with the time zone database bundled).
//!
//! A query asks the time and is answered with it as text. The request is `[ZONE] [FORMAT]`, both
//! optional:
//!
//! - `ZONE`: an IANA time zone (`Europe/Paris`, `America/New_York`, `UTC`) or `local`; default
//!   the clock's zone.
//! - `FORMAT`: `rfc3339` (`2026-11-24T10:30:00+01:00`), `rfc2822`
//!   (`Tue, 24 Nov 2026 10:30:00 +0100`), `unix` (seconds), `unix-ms`, or a `strftime` pattern
//!   such as `%H:%M %Z` (the rest of the request); default the clock's format.
//!
//! An unknown zone or a malformed pattern is the handler's error, and the clock goes on.
//!
//! A clock can also be a source: [`Clock::ticking`] makes it send the time to its siblings on an
//! interval, from the runtime's timers on its own agent thread, until the system stops.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use sophon::backends::clock::Clock;
//! use sophon::SystemBuilder;
//!
//! let mut builder = SystemBuilder::new();
//! let clock = builder.entity("clock", Clock::new());
//! let times = builder.output(&clock, "times");
//! let system = builder.spawn()?;
//!
//! system.handle(&clock).query("Asia/Tokyo %Z".into())?;
//! assert_eq!(times.recv()?, "JST");
//! system.handle(&clock).query("UTC unix".into())?;
//! let seconds: i64 = times.recv()?.parse()?;
//! assert!(seconds > 1_700_000_000);
//! assert!(system.shutdown(Duration::from_secs(5)).is_clean());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{Timestamp, ZonedDateTime};

use crate::{BoxError, Context, TimerId, backend};

/// How a clock writes the time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeFormat {
    /// RFC 3339 with the zone's offset, to the second: `2026-11-24T10:30:00+01:00`.
    Rfc3339,
    /// RFC 2822, as in e-mail: `Tue, 24 Nov 2026 10:30:00 +0100`.
    Rfc2822,
    /// Seconds since the Unix epoch.
    Unix,
    /// Milliseconds since the Unix epoch.
    UnixMillis,
    /// A `strftime` pattern, such as `%Y-%m-%d %H:%M:%S %Z`.
    Strftime(String),
}

impl TimeFormat {
    fn parse(word: &str) -> Option<TimeFormat> {
        match word.to_ascii_lowercase().as_str() {
            "rfc3339" | "iso" | "iso8601" => Some(TimeFormat::Rfc3339),
            "rfc2822" | "email" => Some(TimeFormat::Rfc2822),
            "unix" => Some(TimeFormat::Unix),
            "unix-ms" | "unix_ms" | "millis" => Some(TimeFormat::UnixMillis),
            _ => None,
        }
    }
}

/// Why a clock could not answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClockError {
    /// The zone is not in the time zone database.
    UnknownZone(String),
    /// The word is neither a zone nor a format.
    UnknownWord(String),
    /// The time could not be written in that format; the source is jiff's error.
    Format(jiff::Error),
}

impl fmt::Display for ClockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClockError::UnknownZone(zone) => {
                write!(f, "unknown time zone `{zone}`; use an IANA name such as `Europe/Paris`")
            }
            ClockError::UnknownWord(word) => write!(
                f,
                "`{word}` is neither a time zone nor a format; formats are `rfc3339`, `rfc2822`, `unix`, `unix-ms` or a `strftime` pattern"
            ),
            ClockError::Format(e) => write!(f, "cannot format the time: {e}"),
        }
    }
}

impl std::error::Error for ClockError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClockError::Format(e) => Some(e),
            _ => None,
        }
    }
}

/// Tells the time, and can tick. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct Clock {
    zone: TimeZone,
    format: TimeFormat,
    tick: Option<Duration>,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    /// A clock in UTC that answers in RFC 3339 and does not tick.
    pub fn new() -> Self {
        Clock { zone: TimeZone::UTC, format: TimeFormat::Rfc3339, tick: None }
    }

    /// The zone used when a request names none: an IANA name, `UTC` or `local` (this machine's).
    pub fn zone(mut self, zone: &str) -> Result<Self, ClockError> {
        self.zone = find_zone(zone)?;
        Ok(self)
    }

    /// The format used when a request names none.
    #[must_use]
    pub fn format(mut self, format: TimeFormat) -> Self {
        self.format = format;
        self
    }

    /// Sends the time to every sibling every `period`, from when the system starts until it
    /// stops.
    #[must_use]
    pub fn ticking(mut self, period: Duration) -> Self {
        self.tick = Some(period);
        self
    }

    /// The time now, as `request` asks (see the [module docs](self)).
    pub fn tell(&self, request: &str) -> Result<String, ClockError> {
        let (zone, format) = self.parse(request)?;
        write_time(&Timestamp::now().to_zoned_datetime(zone), &format)
    }

    fn parse(&self, request: &str) -> Result<(TimeZone, TimeFormat), ClockError> {
        let mut zone = None;
        let mut format = None;
        let mut rest = request.trim();
        while !rest.is_empty() {
            if rest.contains('%') && format.is_none() && !rest.split_whitespace().next().is_some_and(is_zone_like) {
                format = Some(TimeFormat::Strftime(rest.to_owned()));
                break;
            }
            let (word, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            rest = after.trim_start();
            match TimeFormat::parse(word) {
                Some(f) if format.is_none() => format = Some(f),
                _ if zone.is_none() && is_zone_like(word) => zone = Some(find_zone(word)?),
                _ => return Err(ClockError::UnknownWord(word.to_owned())),
            }
        }
        Ok((zone.unwrap_or_else(|| self.zone.clone()), format.unwrap_or_else(|| self.format.clone())))
    }
}

fn is_zone_like(word: &str) -> bool {
    word.contains('/')
        || word.eq_ignore_ascii_case("utc")
        || word.eq_ignore_ascii_case("local")
        || word.eq_ignore_ascii_case("gmt")
}

fn find_zone(name: &str) -> Result<TimeZone, ClockError> {
    if name.eq_ignore_ascii_case("local") {
        return Ok(TimeZone::system());
    }
    if name.eq_ignore_ascii_case("utc") || name.eq_ignore_ascii_case("gmt") {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name).map_err(|_| ClockError::UnknownZone(name.to_owned()))
}

fn write_time(time: &ZonedDateTime, format: &TimeFormat) -> Result<String, ClockError> {
    let error = ClockError::Format;
    Ok(match format {
        TimeFormat::Rfc3339 => time.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        TimeFormat::Rfc2822 => jiff::fmt::rfc2822::to_string(time).map_err(error)?,
        TimeFormat::Unix => time.timestamp().as_second().to_string(),
        TimeFormat::UnixMillis => time.timestamp().as_millisecond().to_string(),
        TimeFormat::Strftime(pattern) => jiff::fmt::strtime::format(pattern, time).map_err(error)?,
    })
}

#[backend]
impl Clock {
    /// Answers the time, as the request asks.
    fn query(&mut self, request: String) -> Result<String, ClockError> {
        self.tell(&request)
    }

    /// Starts ticking, if the clock ticks.
    fn start(&mut self, ctx: &mut Context<String>) {
        if let Some(period) = self.tick {
            ctx.every(period);
        }
    }

    /// Sends the time, in the clock's zone and format.
    fn timer(&mut self, _: TimerId, ctx: &mut Context<String>) -> Result<(), BoxError> {
        let time = write_time(&Timestamp::now().to_zoned_datetime(self.zone.clone()), &self.format)?;
        ctx.send(time)?;
        Ok(())
    }
}
