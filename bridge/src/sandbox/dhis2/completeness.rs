//! `POST /api/completeDataSetRegistrations` (the 2.38–2.41 JSON shape,
//! answered with an ImportSummary in a WebMessage: 200, or 409 with a
//! conflict per refused registration), `DELETE
//! /api/completeDataSetRegistrations?ds=&pe=&ou=[&cc=&cp=]` (204; the
//! attribute option combo named by its category combo and options, as
//! DHIS2 takes it, the default without them), and
//! `GET /sandbox/registrations`, what is registered.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::{DEFAULT_COC, Dhis2State, gate, illegal_query, web_message};

/// Data set, period, org unit, attribute option combo.
pub(crate) type RegistrationKey = (String, String, String, String);

/// The simulator's completeness registrations.
#[derive(Debug, Default)]
pub(crate) struct Registrations(pub(crate) Mutex<BTreeSet<RegistrationKey>>);

impl Dhis2State {
    /// Checks one registration against the metadata and the calendar, in
    /// 2.40's order (data set, period, org unit): its key, or DHIS2's
    /// conflict (object, message).
    fn check_registration(&self, r: &Value) -> Result<RegistrationKey, (String, String)> {
        let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let (ds, pe, ou) = (text("dataSet"), text("period"), text("organisationUnit"));
        let aoc = r
            .get("attributeOptionCombo")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_COC)
            .to_owned();
        if !self.metadata.data_sets.contains_key(&ds) {
            return Err((
                ds.clone(),
                format!("Data set not found or not accessible: `{ds}`"),
            ));
        }
        // As 2.40 (`DefaultCompleteDataSetRegistrationExchangeService`):
        // a period that does not exist in the system calendar.
        let Some(pe) = self.calendar.canonical_period(&pe) else {
            return Err((pe, "Period not valid".to_owned()));
        };
        if !self.metadata.ou_index.contains_key(&ou) {
            return Err((
                ou.clone(),
                format!("Organisation unit not found or not accessible: `{ou}`"),
            ));
        }
        Ok((ds, pe, ou, aoc))
    }
}

/// `POST /api/completeDataSetRegistrations`.
pub(super) async fn register(
    state: web::Data<Dhis2State>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    if let Some(r) = gate(&state, &req).await {
        return r;
    }
    let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(list) = doc
        .get("completeDataSetRegistrations")
        .and_then(Value::as_array)
    else {
        return web_message(
            StatusCode::BAD_REQUEST,
            "ERROR",
            "Expected a completeDataSetRegistrations list",
            None,
        );
    };
    let (mut imported, mut conflicts) = (0u64, Vec::new());
    for r in list {
        match state.check_registration(r) {
            Ok(key) => {
                let mut regs = state
                    .registrations
                    .0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                regs.insert(key);
                imported += 1;
            }
            Err((object, value)) => conflicts.push(json!({"object": object, "value": value})),
        }
    }
    let ignored = conflicts.len() as u64;
    let status = if ignored == 0 { "SUCCESS" } else { "WARNING" };
    let summary = json!({
        "responseType": "ImportSummary",
        "status": status,
        "description": "Import process completed successfully",
        "importCount": {"imported": imported, "updated": 0, "ignored": ignored, "deleted": 0},
        "conflicts": conflicts,
        "dataSetComplete": "false",
    });
    if ignored == 0 {
        web_message(
            StatusCode::OK,
            "OK",
            "Import was successful.",
            Some(summary),
        )
    } else {
        web_message(
            StatusCode::CONFLICT,
            "WARNING",
            "One more conflicts encountered, please check import summary.",
            Some(summary),
        )
    }
}

/// `DELETE /api/completeDataSetRegistrations?ds=&pe=&ou=[&cc=&cp=]`.
pub(super) async fn undo(state: web::Data<Dhis2State>, req: HttpRequest) -> HttpResponse {
    if let Some(r) = gate(&state, &req).await {
        return r;
    }
    let query = super::super::query_pairs(req.query_string());
    let get = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let pe = get("pe");
    // As 2.40's `CompleteDataSetRegistrationController`.
    let Some(pe) = state.calendar.canonical_period(&pe) else {
        return web_message(
            StatusCode::CONFLICT,
            "ERROR",
            &format!("Illegal period identifier: {pe}"),
            None,
        );
    };
    // As 2.40's `InputUtils.getAttributeOptionCombo`: `cc` and `cp`
    // together or neither (E2040), an unknown combination refused (E2041).
    let aoc = match (get("cc"), get("cp")) {
        (cc, cp) if cc.is_empty() && cp.is_empty() => DEFAULT_COC.to_owned(),
        (cc, cp) if cc.is_empty() || cp.is_empty() => {
            return illegal_query(
                "E2040",
                "Both category combination and category options must be specified",
            );
        }
        (cc, cp) => {
            let options: Vec<String> = cp.split(';').map(str::to_owned).collect();
            match state.metadata.attribute_combo_of(&cc, &options) {
                Some(aoc) => aoc.to_owned(),
                None => {
                    return illegal_query(
                        "E2041",
                        "Attribute option combo does not exist for given category combo and category options",
                    );
                }
            }
        }
    };
    let key = (get("ds"), pe, get("ou"), aoc);
    state
        .registrations
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&key);
    HttpResponse::NoContent().finish()
}

/// `GET /sandbox/registrations`.
pub(super) async fn list(state: web::Data<Dhis2State>) -> HttpResponse {
    let regs = state
        .registrations
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let list: Vec<Value> = regs
        .iter()
        .map(|(ds, pe, ou, aoc)| {
            json!({"dataSet": ds, "period": pe, "organisationUnit": ou, "attributeOptionCombo": aoc})
        })
        .collect();
    HttpResponse::Ok().json(json!({"completeDataSetRegistrations": list}))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use crate::sandbox::{Sandbox, SandboxConfig};

    #[tokio::test]
    async fn registrations_are_kept_refused_and_undone() {
        crate::tls::install_crypto_provider();
        let sb = Sandbox::start(SandboxConfig::for_test()).await.unwrap();
        let http = reqwest::Client::new();
        let url = format!("{}/api/completeDataSetRegistrations", sb.dhis2_url());
        let reg = |pe: &str| json!({"dataSet": "BfMAe6Itzgt", "period": pe, "organisationUnit": "DiszpKrYNg8", "completed": true});
        let r = http
            .post(&url)
            .basic_auth("admin", Some("district"))
            .json(&json!({"completeDataSetRegistrations": [reg("202401"), reg("202413")]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 409);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["response"]["importCount"]["imported"], 1);
        assert_eq!(body["response"]["conflicts"][0]["object"], "202413");
        let listed = |sb: &Sandbox| {
            let url = format!("{}/sandbox/registrations", sb.dhis2_url());
            async move {
                let v: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
                v["completeDataSetRegistrations"].as_array().unwrap().len()
            }
        };
        assert_eq!(listed(&sb).await, 1);
        // The undo of the 202401 registration, with `extra` parameters.
        let undo = |extra: &[(&'static str, &'static str)]| {
            let mut query = vec![
                ("ds", "BfMAe6Itzgt"),
                ("pe", "202401"),
                ("ou", "DiszpKrYNg8"),
            ];
            query.extend_from_slice(extra);
            http.delete(&url)
                .basic_auth("admin", Some("district"))
                .query(&query)
                .send()
        };
        let r = undo(&[]).await.unwrap();
        assert_eq!(r.status().as_u16(), 204);
        assert_eq!(listed(&sb).await, 0);
        // As DHIS2: `cc` without `cp` is refused (E2040), and so is a
        // combination no attribute option combo has (E2041).
        for (cc, cp, code) in [
            ("WBW7RjsApsv", "", "E2040"),
            ("WBW7RjsApsv", "NoSuchOpt01", "E2041"),
        ] {
            let r = undo(&[("cc", cc), ("cp", cp)]).await.unwrap();
            assert_eq!(r.status().as_u16(), 409);
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["errorCode"], code);
        }
        sb.stop().await;
    }

    /// An attribute option combo is found by its category combo and
    /// options, whatever their order.
    #[test]
    fn an_attribute_combo_is_found_by_its_category_combo_and_options() {
        let mut doc: serde_json::Value =
            serde_json::from_str(crate::sandbox::DEFAULT_METADATA).unwrap();
        doc["attributeOptionCombos"] = json!([
            {"id": "TgtResAoc01", "categoryCombo": {"id": "WBW7RjsApsv"},
                "categoryOptions": ["STgy27fGvaU", "JvIqWKLPPkt"]}
        ]);
        let md = crate::sandbox::dhis2::Metadata::parse(&doc.to_string()).unwrap();
        let options = |o: &[&str]| o.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            md.attribute_combo_of("WBW7RjsApsv", &options(&["JvIqWKLPPkt", "STgy27fGvaU"])),
            Some("TgtResAoc01")
        );
        assert_eq!(
            md.attribute_combo_of("WBW7RjsApsv", &options(&["STgy27fGvaU"])),
            None
        );
        assert_eq!(
            md.attribute_combo_of("O4VaNks6tta", &options(&["JvIqWKLPPkt", "STgy27fGvaU"])),
            None
        );
    }
}
