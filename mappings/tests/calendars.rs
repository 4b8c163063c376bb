//! DHIS2 period ids computed in the destination's system calendar from
//! each event's own date, when the event is mapped; test cases in mapping
//! files keep ISO 8601 ids whatever the calendar.

use kiungo_mappings::period::Calendar;
use kiungo_mappings::{Event, LoadOptions, MapError, MappingSet};
use serde_json::{Value, json};

const VISITS: &str = r#"id: visits
version: 1
description: visits per month and per week
source: demo
event_id: event.id
dhis2:
  - name: monthly
    data_element: fbfJHSPpUQD
    org_unit: DiszpKrYNg8
    period: { type: Monthly, date: event.date }
    aggregation: count
tests:
  - name: iso ids in tests
    event: { id: t1, date: "2016-09-11" }
    expect:
      event_id: t1
      dhis2:
        - { rule: monthly, dataElement: fbfJHSPpUQD, period: "201609", orgUnit: DiszpKrYNg8, categoryOptionCombo: HllvX50cXC0, attributeOptionCombo: HllvX50cXC0, value: 1, aggregation: count, date: "2016-09-11" }
"#;

fn set(calendar: Calendar) -> (tempfile::TempDir, MappingSet) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("visits.yaml"), VISITS).expect("write");
    let set = MappingSet::load_dir(
        dir.path(),
        LoadOptions {
            calendar,
            ..LoadOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (dir, set)
}

fn event(payload: Value) -> Event {
    Event {
        source: "demo".into(),
        message_id: Some("msg-1".into()),
        payload: std::sync::Arc::new(payload),
    }
}

fn period(set: &MappingSet, date: &str) -> Result<String, MapError> {
    let mapped = set.map(&event(json!({"id": "e1", "date": date})))?;
    Ok(mapped.dhis2[0].period.clone())
}

#[test]
fn periods_follow_the_destination_calendar() {
    let (_d, iso) = set(Calendar::Iso8601);
    let (_e, eth) = set(Calendar::Ethiopian);
    let (_n, nep) = set(Calendar::Nepali);
    assert_eq!(eth.calendar(), Calendar::Ethiopian);
    // 1 Meskerem 2009 = 11 September 2016 (EthiopianCalendarTest's new
    // year rule); 30 Nehase 2009 = 5 September 2017, the last day placed.
    assert_eq!(period(&iso, "2016-09-11").ok(), Some("201609".into()));
    assert_eq!(period(&eth, "2016-09-11").ok(), Some("200901".into()));
    assert_eq!(period(&eth, "2017-09-05").ok(), Some("200912".into()));
    // 1 Baisakh 2081 = 13 April 2024; Shrawan 2081 (32 days) ends 16 August.
    assert_eq!(period(&nep, "2024-04-12").ok(), Some("208012".into()));
    assert_eq!(period(&nep, "2024-04-13").ok(), Some("208101".into()));
    assert_eq!(period(&nep, "2024-08-16").ok(), Some("208104".into()));
    assert_eq!(period(&nep, "2024-08-17").ok(), Some("208105".into()));
    // The mapping's ISO test case passes whatever the set's calendar.
    let reports = eth.run_tests();
    assert!(
        reports.iter().all(|r| r.failures.is_empty()),
        "{:?}",
        reports[0].failures
    );
}

#[test]
fn a_date_in_pagume_is_an_error_naming_field_and_event_without_the_date() {
    let (_e, eth) = set(Calendar::Ethiopian);
    let err = period(&eth, "2017-09-07").expect_err("Pagume has no period");
    let text = err.to_string();
    assert!(text.contains("visits") && text.contains("period"), "{text}");
    assert!(
        text.contains("e1") && text.contains("Pagume 2009"),
        "{text}"
    );
    assert!(
        !text.contains("2017-09-07"),
        "the date stays with the values: {text}"
    );
    assert_eq!(err.values(), ["date 2017-09-07"]);
}
