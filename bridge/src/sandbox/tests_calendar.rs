//! The DHIS2 simulator in a non-ISO system calendar (`--calendar`), over
//! HTTP: it says so in `/api/system/info`, and import, read-back and
//! completeness registration refuse period ids that do not exist in that
//! calendar, with DHIS2 2.40's answers.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use serde_json::{Value, json};

use super::{Sandbox, SandboxConfig, SystemCalendar};

const ANC1: &str = "fbfJHSPpUQD";
const FIXED: &str = "pq2XI5kz2BY";
const NGELEHUN: &str = "DiszpKrYNg8";
const RH: &str = "QX4ZTUbOt3a"; // Reproductive Health, holds ANC1

async fn start(calendar: SystemCalendar) -> Sandbox {
    crate::tls::install_crypto_provider();
    let mut config = SandboxConfig::for_test();
    config.dhis2.calendar = calendar;
    Sandbox::start(config).await.unwrap()
}

fn dv(pe: &str, value: &str) -> Value {
    json!({"dataElement": ANC1, "period": pe, "orgUnit": NGELEHUN,
           "categoryOptionCombo": FIXED, "value": value})
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request
        .basic_auth("admin", Some("district"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn import(sb: &Sandbox, values: Vec<Value>) -> (u16, Value) {
    send(
        reqwest::Client::new()
            .post(format!("{}/api/dataValueSets", sb.dhis2_url()))
            .json(&json!({ "dataValues": values })),
    )
    .await
}

async fn get(sb: &Sandbox, path_and_query: &str) -> (u16, Value) {
    send(reqwest::Client::new().get(format!("{}{path_and_query}", sb.dhis2_url()))).await
}

fn stored_periods(sb: &Sandbox) -> Vec<String> {
    sb.dhis2_values()["dataValues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["period"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn system_info_reports_the_configured_calendar() {
    for calendar in SystemCalendar::ALL {
        let sb = start(calendar).await;
        let (status, info) = get(&sb, "/api/system/info").await;
        assert_eq!(status, 200);
        assert_eq!(info["calendar"], calendar.name(), "{info}");
        sb.stop().await;
    }
}

#[tokio::test]
async fn an_ethiopian_server_refuses_pagume_and_month_14_and_stores_the_rest() {
    let sb = start(SystemCalendar::Ethiopian).await;
    let (status, msg) = import(
        &sb,
        vec![
            dv("200912", "1"),
            dv("200913", "2"),
            dv("20091230", "3"),
            dv("200914", "4"),
            dv("20091301", "5"),
        ],
    )
    .await;
    assert_eq!(status, 409, "{msg}");
    let summary = &msg["response"];
    assert_eq!(summary["status"], "WARNING");
    assert_eq!(
        summary["importCount"],
        json!({"imported": 2, "updated": 0, "ignored": 3, "deleted": 0})
    );
    assert_eq!(summary["rejectedIndexes"], json!([1, 3, 4]));
    assert_eq!(
        summary["conflicts"][0],
        json!({"object": "200913", "objects": {"period": "200913"},
               "value": "Period not valid: `200913`", "errorCode": "E7611",
               "property": "period", "indexes": [1]})
    );
    let refused: Vec<&str> = summary["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["object"].as_str().unwrap())
        .collect();
    assert_eq!(refused, ["200913", "200914", "20091301"]);
    assert_eq!(stored_periods(&sb), ["200912", "20091230"]);

    // Read back: a period that exists, one that does not.
    let (status, set) = get(
        &sb,
        &format!("/api/dataValueSets?dataSet={RH}&period=200912&orgUnit={NGELEHUN}"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(set["dataValues"][0]["value"], "1", "{set}");
    let (status, refused) = get(
        &sb,
        &format!("/api/dataValueSets?dataSet={RH}&period=200913&orgUnit={NGELEHUN}"),
    )
    .await;
    assert_eq!((status, &refused["errorCode"]), (409, &json!("E2002")));
    let (status, refused) = get(
        &sb,
        &format!("/api/dataValues?de={ANC1}&pe=200913&ou={NGELEHUN}&co={FIXED}"),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(
        (&refused["errorCode"], &refused["message"]),
        (&json!("E1101"), &json!("Period is invalid: `200913`"))
    );
    let (status, one) = get(
        &sb,
        &format!("/api/dataValues?de={ANC1}&pe=20091230&ou={NGELEHUN}&co={FIXED}"),
    )
    .await;
    assert_eq!((status, one), (200, json!(["3"])));
    sb.stop().await;
}

#[tokio::test]
async fn a_nepali_server_knows_its_month_lengths() {
    let sb = start(SystemCalendar::Nepali).await;
    // Ashadh 2079 has 32 days, Shrawan 2079 has 31.
    let (status, msg) = import(&sb, vec![dv("20790332", "1"), dv("20790432", "2")]).await;
    assert_eq!(status, 409, "{msg}");
    let conflicts = msg["response"]["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0]["errorCode"], "E7611");
    assert_eq!(conflicts[0]["object"], "20790432");
    assert_eq!(stored_periods(&sb), ["20790332"]);
    sb.stop().await;
}

#[tokio::test]
async fn an_iso_period_that_is_no_ethiopian_one_is_refused_and_vice_versa() {
    // 20240230: no Gregorian day, but 30 Yekatit 2024 is an Ethiopian one.
    let iso = start(SystemCalendar::Gregorian).await;
    let (status, msg) = import(&iso, vec![dv("20240230", "1")]).await;
    assert_eq!(status, 409, "{msg}");
    assert_eq!(msg["response"]["conflicts"][0]["errorCode"], "E7611");
    iso.stop().await;
    let ethiopian = start(SystemCalendar::Ethiopian).await;
    let (status, msg) = import(&ethiopian, vec![dv("20240230", "1")]).await;
    assert_eq!(status, 200, "{msg}");
    ethiopian.stop().await;
}

#[tokio::test]
async fn completeness_registrations_take_only_periods_of_the_calendar() {
    let sb = start(SystemCalendar::Ethiopian).await;
    let url = format!("{}/api/completeDataSetRegistrations", sb.dhis2_url());
    let reg = |pe: &str| json!({"dataSet": RH, "period": pe, "organisationUnit": NGELEHUN, "completed": true});
    let (status, msg) = send(
        reqwest::Client::new()
            .post(&url)
            .json(&json!({"completeDataSetRegistrations": [reg("200912"), reg("200913")]})),
    )
    .await;
    assert_eq!(status, 409, "{msg}");
    assert_eq!(msg["response"]["importCount"]["imported"], 1);
    assert_eq!(
        msg["response"]["conflicts"],
        json!([{"object": "200913", "value": "Period not valid"}])
    );
    let (_, listed) = get(&sb, "/sandbox/registrations").await;
    assert_eq!(
        listed["completeDataSetRegistrations"][0]["period"], "200912",
        "{listed}"
    );
    let (status, refused) = send(reqwest::Client::new().delete(&url).query(&[
        ("ds", RH),
        ("pe", "200913"),
        ("ou", NGELEHUN),
    ]))
    .await;
    assert_eq!(status, 409);
    assert_eq!(refused["message"], "Illegal period identifier: 200913");
    sb.stop().await;
}
