//! The clock: answers in the zones and formats asked, and ticks on an interval until shutdown.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sophon::SystemBuilder;
use sophon::backends::clock::{Clock, TimeFormat};

const WAIT: Duration = Duration::from_secs(10);

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn a_query_answers_the_time_in_the_zone_and_format_asked() {
    let clock = Clock::new().zone("Europe/Paris").unwrap();
    let mut builder = SystemBuilder::new();
    let node = builder.entity("clock", clock);
    let times = builder.output(&node, "times");
    let system = builder.spawn().unwrap();
    let failures = system.failures();
    let ask = |request: &str| {
        system.handle(&node).query(request.to_owned()).unwrap();
        times.recv_timeout(WAIT).unwrap()
    };
    let unix: i64 = ask("unix").parse().unwrap();
    assert!((unix - now_unix()).abs() <= 2, "{unix}");
    let millis: i64 = ask("UTC unix-ms").parse().unwrap();
    assert!((millis / 1000 - now_unix()).abs() <= 2, "{millis}");
    assert!(matches!(ask("%Z").as_str(), "CET" | "CEST"));
    assert_eq!(ask("Asia/Kolkata %:z"), "+05:30");
    assert_eq!(ask("America/Los_Angeles %Z %Y").len(), 8, "PST or PDT, a space and the year");
    let rfc3339 = ask("");
    assert!(rfc3339.ends_with("+01:00") || rfc3339.ends_with("+02:00"), "{rfc3339}");
    assert_eq!(rfc3339.len(), "2026-11-24T10:30:00+01:00".len(), "{rfc3339}");
    let rfc2822 = ask("UTC rfc2822");
    assert!(rfc2822.ends_with(" +0000"), "{rfc2822}");
    assert_eq!(ask("utc %H:%M").len(), 5);

    system.handle(&node).query("Mars/Olympus_Mons".into()).unwrap();
    assert_eq!(
        failures.recv_timeout(WAIT).unwrap().message(),
        "unknown time zone `Mars/Olympus_Mons`; use an IANA name such as `Europe/Paris`"
    );
    system.handle(&node).query("soon".into()).unwrap();
    assert!(failures.recv_timeout(WAIT).unwrap().message().starts_with("`soon` is neither a time zone nor a format"));
    // The clock goes on.
    assert!(ask("unix").parse::<i64>().is_ok());
    let report = system.shutdown(WAIT);
    assert_eq!(report.entity("clock").unwrap().stats.errors, 2);
}

#[test]
fn ticks_arrive_at_the_interval_and_stop_at_shutdown() {
    const PERIOD: Duration = Duration::from_millis(50);
    let clock = Clock::new().format(TimeFormat::UnixMillis).ticking(PERIOD);
    let mut builder = SystemBuilder::new();
    let node = builder.entity("clock", clock);
    let ticks = builder.output(&node, "ticks");
    let started = Instant::now();
    let system = builder.spawn().unwrap();
    let mut arrivals = Vec::new();
    for _ in 0..10 {
        let tick: i64 = ticks.recv_timeout(WAIT).unwrap().parse().unwrap();
        assert!((tick / 1000 - now_unix()).abs() <= 2);
        arrivals.push(started.elapsed());
    }
    let report = system.shutdown(WAIT);
    assert!(report.is_clean(), "{report}");
    // Ten ticks take ten periods: never fewer, and not much more on a busy machine.
    let total = arrivals[9];
    assert!(total >= PERIOD * 10 - Duration::from_millis(5), "{total:?}");
    assert!(total < PERIOD * 10 + Duration::from_millis(400), "{total:?}");
    for pair in arrivals.windows(2) {
        assert!(pair[1] - pair[0] < PERIOD * 4, "a gap of {:?}", pair[1] - pair[0]);
    }
    // Nothing ticks after shutdown.
    let sent = report.entity("clock").unwrap().stats.sent;
    let after: Vec<String> = ticks.try_iter().collect();
    assert_eq!(sent as usize, 10 + after.len());
    std::thread::sleep(PERIOD * 3);
    assert!(ticks.try_recv().is_err());
}
