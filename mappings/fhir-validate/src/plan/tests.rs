//! The plan's check is the full check: same verdict, same first problem,
//! same `urn:uuid` references, on resources made from templates with
//! every kind of value at their expressions' places.

use serde_json::{Value, json};

use super::*;
use crate::UrnRef;

/// A template from JSON: a string `"=…"` is an expression, whose valid
/// value (JSON text after the `=`, none when empty) goes to `good`; every
/// other scalar is a literal; places number the nodes in document order.
fn template(v: &Value, next: &mut u32, good: &mut Vec<Option<Value>>) -> Node {
    let place = *next;
    *next += 1;
    let shape = match v {
        Value::String(s) if s.starts_with('=') => {
            good.push(serde_json::from_str(&s[1..]).ok());
            Shape::Varies
        }
        Value::Null => Shape::Absent,
        Value::Object(m) => Shape::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), template(v, next, good)))
                .collect(),
        ),
        Value::Array(a) => Shape::Array(a.iter().map(|v| template(v, next, good)).collect()),
        other => Shape::Fixed(other.clone()),
    };
    Node { place, shape }
}

/// What the mapping engine renders: each expression's value in turn from
/// `values` (`None`: it gives nothing), absent keys and items left out, then
/// objects and arrays left empty.
fn render(node: &Node, values: &mut dyn FnMut() -> Option<Value>) -> Option<Value> {
    match &node.shape {
        Shape::Absent => None,
        Shape::Fixed(v) => Some(v.clone()),
        Shape::Varies => values(),
        Shape::Object(entries) => {
            let mut out = Map::new();
            for (k, n) in entries {
                if let Some(v) = render(n, values) {
                    out.insert(k.clone(), v);
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        Shape::Array(items) => {
            let out: Vec<Value> = items.iter().filter_map(|n| render(n, values)).collect();
            (!out.is_empty()).then_some(Value::Array(out))
        }
    }
}

/// Values an expression may give: valid and invalid for every slot.
fn pool() -> Vec<Value> {
    vec![
        json!("final"),
        json!("completed"),
        json!("active"),
        json!("bogus"),
        json!("2024-05-14"),
        json!("2024-05-14T10:00:00Z"),
        json!("2024-05-13"),
        json!("2024-02-30"),
        json!("urn:uuid:0b3a8f6e-0000-5000-8000-000000000000"),
        json!("urn:uuid:0b3a8f6e-0000-5000-8000-00000000000A"),
        json!("Patient/p1"),
        json!("Practitioner/p1"),
        json!("Group/g 1"),
        json!("http://loinc.org"),
        json!("kg"),
        json!(""),
        json!(8.6),
        json!(3),
        json!(true),
        json!({"text": "x"}),
        json!({"bogus": 1}),
        json!({"url": "http://x.org/e", "valueString": "v"}),
        json!({"linkId": "fixed", "text": "F"}),
        json!({"linkId": "session", "text": "Session", "answer": [{"valueCoding": {"system": "https://x.org/session", "code": "s"}}]}),
        json!({"linkId": "weight", "answer": [{"valueDecimal": "8.6"}]}),
        json!({"linkId": "x", "answer": [{"valueReference": {"reference": "urn:uuid:0b3a8f6e-0000-5000-8000-000000000003"}}]}),
        json!(["a"]),
        json!([{"text": "y"}]),
        json!([]),
        Value::Null,
    ]
}

/// A small deterministic generator (xorshift), so that a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Templates that hold every rule the per-resource check keeps: required
/// elements, choices, ele-1, the invariants, references and their targets,
/// required bindings on codes and codings, arrays of fixed and made items.
fn templates() -> Vec<Value> {
    vec![
        json!({
            "resourceType": "Immunization",
            "id": "=\"imm1\"",
            "status": "=\"completed\"",
            "vaccineCode": {"coding": [
                {"system": "=\"http://hl7.org/fhir/sid/cvx\"", "code": "=\"19\""},
                {"system": "http://hl7.org/fhir/sid/cvx", "code": "19"}
            ]},
            "patient": {"reference": "=\"urn:uuid:0b3a8f6e-0000-5000-8000-000000000000\""},
            "occurrenceDateTime": "=\"2024-05-14\"",
            "occurrenceString": "=",
            "primarySource": true,
            "performer": [
                {"actor": {"reference": "=\"Practitioner/p1\""}},
                {"function": {"text": "x"}, "actor": {"reference": "Practitioner/p1"}}
            ],
            "lotNumber": "=\"L1\"",
            "extension": [
                {"url": "http://x.org/e", "valueString": "=\"v\""},
                {"url": "=", "extension": "="}
            ]
        }),
        json!({
            "resourceType": "Observation",
            "status": "=\"final\"",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}], "text": "=\"w\""},
            "subject": {"reference": "=\"Patient/p1\"", "display": "="},
            "encounter": {"reference": "urn:uuid:0b3a8f6e-0000-5000-8000-000000000001"},
            "effectiveDateTime": "=\"2024-05-14T10:00:00Z\"",
            "valueQuantity": {"value": "=8.6", "unit": "kg", "system": "=\"http://unitsofmeasure.org\"", "code": "=\"kg\""},
            "valueString": "=",
            "dataAbsentReason": {"text": "="},
            "component": [
                {"code": {"text": "systolic"}, "valueQuantity": {"value": "=120", "unit": "mm[Hg]"}},
                "="
            ],
            "note": ["={\"text\": \"n\"}", {"text": "fixed"}]
        }),
        json!({
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "=\"AMB\""},
            "subject": {"reference": "=\"urn:uuid:0b3a8f6e-0000-5000-8000-000000000000\""},
            "period": {"start": "=\"2024-05-13\"", "end": "=\"2024-05-14\""},
            "identifier": [{"system": "https://x.org/report", "value": "=\"r1\""}],
            "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "424525001"}], "text": "=\"ANC\""}]
        }),
        json!({
            "resourceType": "QuestionnaireResponse",
            "status": "completed",
            "subject": {"reference": "=\"urn:uuid:0b3a8f6e-0000-5000-8000-000000000000\""},
            "author": "={\"identifier\": {\"system\": \"https://x.org/u\", \"value\": \"u1\"}}",
            "item": [
                "={\"linkId\": \"r\", \"answer\": [{\"valueReference\": {\"reference\": \"urn:uuid:0b3a8f6e-0000-5000-8000-000000000005\"}}], \"text\": \"other\"}",
                {"linkId": "r", "answer": [{"valueReference": {"reference": "=\"urn:uuid:0b3a8f6e-0000-5000-8000-000000000004\""}}], "text": "T"},
                "={\"linkId\": \"fixed\", \"text\": \"F\"}",
                {"linkId": "session", "text": "Session", "answer": [
                    {"valueCoding": {"system": "https://x.org/session", "code": "=\"s\"", "display": "=\"S\""}}
                ]},
                "={\"linkId\": \"muac\", \"answer\": [{\"valueDecimal\": 120}]}",
                {"linkId": "fixed", "text": "F"},
                {"linkId": "weight", "answer": [{"valueDecimal": "=8.6"}]},
                "={\"linkId\": \"ref\", \"answer\": [{\"valueReference\": {\"reference\": \"urn:uuid:0b3a8f6e-0000-5000-8000-000000000002\"}}]}",
                {"linkId": "note", "answer": "=[{\"valueString\": \"n\"}]"},
                "="
            ]
        }),
        json!({
            "resourceType": "Condition",
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "=\"active\""}]},
            "verificationStatus": "=",
            "subject": {"reference": "Patient/p1"},
            "code": {"text": "malaria"},
            "onsetPeriod": {"start": "2024-05-14", "end": "=\"2024-05-15\""},
            "abatementAge": {"value": "=30", "code": "a", "system": "http://unitsofmeasure.org"}
        }),
    ]
}

fn full(resource: &Value) -> (Result<(), FhirError>, Vec<UrnRef>) {
    let mut refs = Vec::new();
    let r = crate::validate_in_bundle(resource, &mut refs);
    (r, refs)
}

#[test]
fn the_plan_gives_the_full_checks_verdict_problem_and_references() {
    let pool = pool();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut passed, mut refused) = (0, 0);
    for t in templates() {
        let ty = t["resourceType"].as_str().expect("type").to_owned();
        let mut good = Vec::new();
        let node = template(&t, &mut 0, &mut good);
        let (plan, problems) = Plan::new(&ty, node.clone()).expect("a plan");
        assert_eq!(problems, [], "{ty}");
        for _ in 0..4000 {
            // Each expression gives its valid value, nothing, or any value
            // of the pool; a resource is valid about half the time.
            let mut slot = 0;
            let mut values = || {
                let i = slot;
                slot += 1;
                match rng.below(40) {
                    0 => None,
                    1 => Some(pool[rng.below(pool.len())].clone()),
                    _ => good.get(i).cloned().flatten(),
                }
            };
            let Some(resource) = render(&node, &mut values) else {
                continue;
            };
            let (expected, refs) = full(&resource);
            let mut urns = Vec::new();
            let got = plan.check(&resource, &mut urns);
            assert_eq!(got, expected, "{resource:#}");
            if expected.is_ok() {
                passed += 1;
                assert_eq!(urns.len(), refs.len(), "{resource:#}");
                for r in &refs {
                    assert!(
                        urns.iter().any(|u| u.names(&r.reference)
                            && u.resolves(Some("Patient")) == r.resolve(Some("Patient")).is_ok()
                            && u.resolves(None) == r.resolve(None).is_ok()),
                        "{resource:#}"
                    );
                }
                // A valid resource never needs the full check.
                let mut quick = Checker {
                    t: tables(),
                    resource_type: plan.resource_type,
                    urns: Sink::None,
                };
                assert!(
                    quick_resource(&mut quick, &plan, &resource).is_ok(),
                    "fell back on a valid resource: {resource:#}"
                );
            } else {
                refused += 1;
            }
        }
    }
    // Both outcomes are common, so that each comparison means something.
    assert!(
        passed > 1000 && refused > 1000,
        "{passed} passed, {refused} refused"
    );
}

#[test]
fn literal_parts_are_checked_once_and_located() {
    let t = json!({
        "resourceType": "Observation",
        "status": "=",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "dispaly": "Body weight"}]},
        "subject": {"reference": "="},
        "valueQuantity": {"value": "=", "unit": "kg", "system": "not a uri"},
        "effectiveDatetime": "="
    });
    let node = template(&t, &mut 0, &mut Vec::new());
    let (plan, problems) = Plan::new("Observation", node).expect("a plan");
    let shown: Vec<(String, Option<u32>)> = problems
        .iter()
        .map(|e| (e.to_string(), plan.locate(e)))
        .collect();
    // Places in document order: 0 the resource, 1 resourceType, 2 status,
    // 3 code, 4 coding, 5 its item, 6 system, 7 code, 8 dispaly, 9 subject,
    // 10 reference, 11 valueQuantity, 12 value, 13 unit, 14 system,
    // 15 effectiveDatetime.
    assert_eq!(
        shown,
        [
            (
                "invalid Observation at `Observation.code.coding[0].dispaly`: unknown element \
                 `dispaly` in Coding (did you mean `display`?)"
                    .to_owned(),
                Some(8)
            ),
            (
                "invalid Observation at `Observation.value[x].system`: expected a uri (no \
                 whitespace), found text that is not one"
                    .to_owned(),
                Some(14)
            ),
            (
                "invalid Observation at `Observation.effectiveDatetime`: unknown element \
                 `effectiveDatetime` in Observation (did you mean `effectiveDateTime`?)"
                    .to_owned(),
                Some(15)
            ),
        ]
    );
}

#[test]
fn problems_found_per_resource_are_located_in_the_template() {
    let t = json!({
        "resourceType": "Observation",
        "code": {"text": "weight"},
        "subject": {"reference": "="},
        "component": [{"code": {"text": "a"}, "valueQuantity": {"value": "="}}]
    });
    let node = template(&t, &mut 0, &mut Vec::new());
    let (plan, problems) = Plan::new("Observation", node.clone()).expect("a plan");
    assert_eq!(problems, []);
    // Places: 0 the resource, 1 resourceType, 2 code, 3 text, 4 subject,
    // 5 reference, 6 component, 7 its item, 8 code, 9 text,
    // 10 valueQuantity, 11 value.
    let made = |subject: &str, value: Value| {
        let mut values = [json!(subject), value].into_iter();
        render(&node, &mut || values.next()).expect("a resource")
    };
    let resource = made("Patient/p1", json!(3));
    let err = plan
        .check(&resource, &mut Vec::new())
        .expect_err("no status");
    // Missing: at the object it is missing from.
    assert_eq!(
        (err.to_string(), plan.locate(&err)),
        (
            "invalid Observation at `Observation.status`: missing required element \
             (cardinality 1..1)"
                .to_owned(),
            Some(0)
        )
    );
    let with_status = |mut r: Value| {
        if let Value::Object(o) = &mut r {
            o.insert("status".into(), json!("final"));
        }
        r
    };
    let err = plan
        .check(&with_status(made("Group/g 1", json!(3))), &mut Vec::new())
        .expect_err("bad reference");
    // A Reference's problem is the Reference's: at `subject`.
    assert!(err.to_string().contains("`Observation.subject`"), "{err}");
    assert_eq!(plan.locate(&err), Some(4), "{err}");
    let err = plan
        .check(
            &with_status(made("Patient/p1", json!("heavy"))),
            &mut Vec::new(),
        )
        .expect_err("text for a decimal");
    assert!(
        err.to_string()
            .contains("Observation.component[0].value[x].value"),
        "{err}"
    );
    assert_eq!(plan.locate(&err), Some(11), "{err}");
    assert_eq!(
        plan.check(&with_status(made("Patient/p1", json!(3))), &mut Vec::new()),
        Ok(())
    );
}
