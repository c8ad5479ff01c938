"""The schemas of the pushed bodies (trip, trip event, crash, diagnosis), generated from the code that
reads them: the key fields the receiver checks (``ingest.keys.ROUTES``) and the lake's field lists
(``lake.schema``), nested by their paths. What is written here is prose, by dotted path, and the
fields DriveQuant sends that have no column (kept in ``extra``); prose naming no field is an error.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ingest.keys import DELETION_EVENT, ROUTES
from ingest.record import Kind
from lake.schema import (CRASH_FIELDS, DELETION_FIELDS, DIAGNOSIS_FIELDS, EVENT_ARRAYS, EVENT_FIELDS, ROUTE_SOURCES,
                         TRIP_FIELDS)

from .bodies import DQ_DATE, DQ_DATE_EXAMPLE


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


NUMERIC = ref("Numeric")
COMPONENTS = {
    "Numeric": {"type": ["number", "string", "null"],
                "description": "A number. Numeric strings (`\"1234.5\"`) are read as numbers; a word where a number "
                               "belongs makes the push FAILED at projection."},
}
LEAVES = {"str": {"type": "string"}, "f64": NUMERIC, "i64": NUMERIC, "bool": {"type": "boolean"},
          "ts": {"type": "string", "examples": [DQ_DATE_EXAMPLE]}}
KEY = {"type": "string", "minLength": 1, "maxLength": 256}  # what ingest.keys.key_of accepts


def _obj(**extra) -> dict:
    return {"type": "object", **extra, "properties": {}, "additionalProperties": True}


@dataclass(frozen=True)
class PushBody:
    """One push kind's body: its schema name, its lake fields (column, path, type), the fields with no
    column (path -> schema), and the prose (dotted path, or "" for the body -> description or a dict
    of schema keywords)."""
    name: str
    fields: list = field(default_factory=list)
    extras: dict = field(default_factory=dict)
    prose: dict = field(default_factory=dict)


def _describe(node: dict, value, date: bool) -> None:
    extra = value if isinstance(value, dict) else {"description": value}
    if date and "description" in extra:
        extra = {**extra, "description": f"{extra['description']} (`{DQ_DATE}`, UTC)"}
    node.update(extra)


def _place(root: dict, path: tuple[str, ...], schema: dict) -> None:
    node = root
    for part in path[:-1]:
        node = node["properties"].setdefault(part, _obj())
        if node.get("type") != "object":
            raise ValueError(f"{'.'.join(path)}: {part} is not an object")
    node["properties"][path[-1]] = {**node["properties"].get(path[-1], {}), **schema}


def _find(root: dict, dotted: str) -> dict:
    node = root
    for part in dotted.split(".") if dotted else ():
        props = node.get("properties") or node.get("items", {}).get("properties")
        if props is None or part not in props:
            raise ValueError(f"prose for '{dotted}', which names no field")
        node = props[part]
    return node


def schema(body: PushBody, key_fields: tuple[str, ...]) -> dict:
    root = _obj(required=list(key_fields)) if key_fields else _obj()
    dates = {".".join(p) for _, p, t in body.fields if t == "ts"} | {p for p, s in body.extras.items()
                                                                      if s is LEAVES["ts"]}
    for _, path, t in body.fields:
        _place(root, path, dict(LEAVES[t]))
    for path, s in body.extras.items():
        _place(root, tuple(path.split(".")), s)
    for name in key_fields:
        _place(root, (name,), KEY)
    for dotted, value in body.prose.items():
        _describe(_find(root, dotted), value, dotted in dates)
    return root


# -- the prose ------------------------------------------------------------------------------------------
ITIN_ID = {"description": "Trip unique identifier (24 hex characters at DriveQuant). Idempotency key of the trip.",
           "examples": ["6030ebe4ea60426b34e9b3bf"]}

TRIP = PushBody(
    "Trip", TRIP_FIELDS,
    extras={
        "endDate": LEAVES["ts"],
        "comments": {"type": "array", "items": {**_obj(), "properties": {"errorCode": {"type": "integer"},
                                                                          "comment": {"type": "string"}}}},
        **{name: _obj() for name in ("advancedEcoDriving", "advancedFuelEstimation", "advancedSafety", "tireWear",
                                       "brakeWear", "energyEstimation")},
        **{name: {"type": "array", "items": ref("TripEvent")} for name in EVENT_ARRAYS},
        "tripAdvicesData": {"type": "array", "items": {"type": "object"}},
        "metaData": {"type": "object", "additionalProperties": {"type": "string"}},
        **{f"route.{name}": {"type": "array", "items": NUMERIC} for name in ROUTE_SOURCES},
    },
    prose={
        "": "A DriveQuant trip push: the trip analysis (scores grouped by category) plus the raw data recorded by "
            "the phone. Only `itinId` is checked on receipt; every other field is optional and any unknown field is "
            "kept (in the `extra` JSON column). A body with an unexpected shape is acknowledged and, if it cannot be "
            "projected, quarantined as FAILED. The latest push of an `itinId` wins; a trip pushed after its "
            "deletion never becomes visible.",
        "itinId": ITIN_ID,
        "userId": "DriveKit user id chosen by the customer app.",
        "vehicleId": "Vehicle id.",
        "firstname": "Driver first name.",
        "lastname": "Driver last name.",
        "endDate": "Trip end date; used when `itineraryData.endDate` is absent",
        "comments": "Analysis comments, e.g. `{errorCode: 0, comment: \"OK\"}`.",
        "itineraryData": "Where and when.",
        "itineraryData.startDate": "Trip start date; dates the trip's lake partition (else the end date, else the "
                                   "receive day)",
        "itineraryData.endDate": "Trip end date",
        "itineraryStatistics": "Trip statistics: durations in s, `distance` in m, `speedMean` in km/h, `meteo` and "
                               "`transportationMode` codes.",
        "ecoDriving": "Eco-driving score (0-10) and sub-scores.",
        "fuelEstimation": "Fuel and CO2 estimation.",
        "safety": "Safety score (0-10) and event counts.",
        "advancedEcoDriving": "Eco-driving per road context (`ecoDrivingContext[]`).",
        "advancedFuelEstimation": "Fuel estimation per road context (`fuelEstimationContext[]`).",
        "advancedSafety": "Safety per road context (`safetyContext[]`).",
        "pollutants": "Pollutant estimates.",
        "tireWear": "Tire wear indicators.",
        "brakeWear": "Brake wear indicators.",
        "driverDistraction": "Phone distraction.",
        "speedingStatistics": "Speeding.",
        "energyEstimation": "Energy estimation (electric vehicles).",
        "logbook": "Logbook status.",
        "tripAdvicesData": "Coaching advice.",
        "metaData": "Customer metadata set in the app.",
        "route": "Raw per-sample tables: parallel arrays of the same length, about one sample per second "
                 "(`gpsDate` in Unix seconds). Arrays of different lengths make the push FAILED.",
    })

TRIP_EVENT = PushBody(
    "TripEvent", EVENT_FIELDS,
    prose={"": "An event (`time` s from the start, position, `type`, `level`, `value`, `duration`, `index` into the "
               "route arrays)."})

TRIP_DELETION = PushBody(
    "TripDeletion", DELETION_FIELDS,
    prose={"": "A trip event (DriveQuant \"push deleted trip\"). Idempotency key: `itinId` + `event`.",
           "itinId": ITIN_ID,
           "event": {"description": "The modification event. `TRIP_DELETION` deletes the trip; other values are "
                                    "stored, not acted upon.", "examples": [DELETION_EVENT]},
           "date": "When the user deleted the trip"})

CRASH = PushBody(
    "Crash", CRASH_FIELDS,
    prose={"": "A DriveQuant crash push. Only `crashId` is checked on receipt; other fields are optional.",
           "crashId": "DriveQuant crash id; idempotency key (latest push wins).",
           "customerId": "DriveQuant customer id.",
           "driverId": "DriveQuant (internal) user id.",
           "userId": "DriveKit user id set by the app.",
           "parameters": "The SDK's crash recording configuration.",
           "parameters.localTripId": "Temporary trip id generated by the SDK (not the itinId).",
           "parameters.date": "Crash date; dates the crash's lake partition",
           "parameters.tripStartDate": "Start date of the trip",
           "status": "`CONFIRMED` or `UNCONFIRMED`."})

DIAGNOSIS = PushBody(
    "Diagnosis", DIAGNOSIS_FIELDS,
    extras={"events": {"type": "array", "items": {"type": "object"}}},
    prose={"": "A DriveQuant diagnosis push. A push without events is the daily heartbeat (\"no change, app "
               "alive\"). Idempotency key: `userId` + SHA-256 of the body.",
           "userId": {"description": "User unique identifier.", "examples": ["john.doe@drivequant.com"]},
           "smartphoneData": "The phone sending the data.",
           "events": "Diagnosis events (permissions, sensors, user events), kept as JSON."})

BODIES = {Kind.TRIP: TRIP, Kind.EVENT: TRIP_DELETION, Kind.CRASH: CRASH, Kind.DIAGNOSIS: DIAGNOSIS}


def components() -> dict:
    """Numeric, TripEvent and one schema per push kind, with that kind's key fields required."""
    out = {**COMPONENTS, TRIP_EVENT.name: schema(TRIP_EVENT, ())}
    for kind, key_fields in ROUTES.values():
        out[BODIES[kind].name] = schema(BODIES[kind], key_fields)
    return out
