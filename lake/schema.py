"""Explicit Arrow schemas of the lake tables, and the field mappings that feed them.

Each mapping is (column, path in the pushed body, type). Fields a mapping does not name stay in
the row's ``extra`` JSON column, so no pushed field is ever lost.
"""
from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")
TYPES = {"str": pa.string(), "f64": pa.float64(), "i64": pa.int64(), "bool": pa.bool_(), "ts": TS}

COMMON = [("team_id", pa.string()), ("date", pa.date32()), ("received_at", TS),
          ("log_part", pa.string()), ("log_offset", pa.int64())]

_S = "itineraryStatistics"
_E = "ecoDriving"
_F = "fuelEstimation"
_Y = "safety"
_D = "driverDistraction"
_P = "speedingStatistics"

TRIP_FIELDS: list[tuple[str, tuple[str, ...], str]] = [
    ("user_id", ("userId",), "str"),
    ("vehicle_id", ("vehicleId",), "str"),
    ("firstname", ("firstname",), "str"),
    ("lastname", ("lastname",), "str"),
    ("start_date", ("itineraryData", "startDate"), "ts"),
    ("end_date", ("itineraryData", "endDate"), "ts"),
    ("departure_city", ("itineraryData", "departureCity"), "str"),
    ("arrival_city", ("itineraryData", "arrivalCity"), "str"),
    ("departure_address", ("itineraryData", "departureAddress"), "str"),
    ("arrival_address", ("itineraryData", "arrivalAddress"), "str"),
    ("distance_m", (_S, "distance"), "f64"),
    ("duration_s", (_S, "tripDuration"), "f64"),
    ("driving_duration_s", (_S, "drivingDuration"), "f64"),
    ("idling_duration_s", (_S, "idlingDuration"), "f64"),
    ("driving_percentage", (_S, "drivingPercentage"), "f64"),
    ("idling_percentage", (_S, "idlingPercentage"), "f64"),
    ("speed_mean_kmh", (_S, "speedMean"), "f64"),
    ("subdisp_nb", (_S, "subdispNb"), "i64"),
    ("meteo", (_S, "meteo"), "i64"),
    ("day", (_S, "day"), "bool"),
    ("week_day", (_S, "weekDay"), "bool"),
    ("transportation_mode", (_S, "transportationMode"), "i64"),
    ("eco_driving_score", (_E, "score"), "f64"),
    ("eco_score_accel", (_E, "scoreAccel"), "f64"),
    ("eco_score_main", (_E, "scoreMain"), "f64"),
    ("eco_score_decel", (_E, "scoreDecel"), "f64"),
    ("eco_std_dev_accel", (_E, "stdDevAccel"), "f64"),
    ("eco_std_dev_main", (_E, "stdDevMain"), "f64"),
    ("eco_std_dev_decel", (_E, "stdDevDecel"), "f64"),
    ("energy_class", (_E, "energyClass"), "i64"),
    ("co2_mass_kg", (_F, "co2Mass"), "f64"),
    ("co2_emission_g_km", (_F, "co2Emission"), "f64"),
    ("fuel_volume_l", (_F, "fuelVolume"), "f64"),
    ("fuel_consumption_l_100km", (_F, "fuelConsumption"), "f64"),
    ("idle_fuel_volume_l", (_F, "idleFuelVolume"), "f64"),
    ("idle_fuel_percentage", (_F, "idleFuelPercentage"), "f64"),
    ("idle_fuel_consumption", (_F, "idleFuelConsumption"), "f64"),
    ("idle_co2_emission", (_F, "idleCo2Emission"), "f64"),
    ("idle_co2_mass", (_F, "idleCo2Mass"), "f64"),
    ("engine_temp_status", (_F, "engineTempStatus"), "bool"),
    ("cold_fuel_volume_l", (_F, "coldFuelVolume"), "f64"),
    ("safety_score", (_Y, "safetyScore"), "f64"),
    ("nb_adh", (_Y, "nbAdh"), "i64"),
    ("nb_accel", (_Y, "nbAccel"), "i64"),
    ("nb_decel", (_Y, "nbDecel"), "i64"),
    ("nb_adh_crit", (_Y, "nbAdhCrit"), "i64"),
    ("nb_accel_crit", (_Y, "nbAccelCrit"), "i64"),
    ("nb_decel_crit", (_Y, "nbDecelCrit"), "i64"),
    ("pollutant_co", ("pollutants", "co"), "f64"),
    ("pollutant_hc", ("pollutants", "hc"), "f64"),
    ("pollutant_nox", ("pollutants", "nox"), "f64"),
    ("pollutant_soot", ("pollutants", "soot"), "f64"),
    ("distraction_score", (_D, "score"), "f64"),
    ("distraction_nb_unlock", (_D, "nbUnlock"), "i64"),
    ("distraction_duration_unlock_s", (_D, "durationUnlock"), "f64"),
    ("distraction_duration_percent_unlock", (_D, "durationPercentUnlock"), "f64"),
    ("distraction_distance_unlock_m", (_D, "distanceUnlock"), "f64"),
    ("distraction_distance_percent_unlock", (_D, "distancePercentUnlock"), "f64"),
    ("distraction_score_unlock", (_D, "scoreUnlock"), "f64"),
    ("distraction_score_call", (_D, "scoreCall"), "f64"),
    ("speeding_score", (_P, "score"), "f64"),
    ("speeding_distance_m", (_P, "speedingDistance"), "f64"),
    ("speeding_duration_s", (_P, "speedingDuration"), "f64"),
    ("logbook_status", ("logbook", "status"), "i64"),
]

# route arrays -> trip_samples columns (all float64: "treat all numbers as numbers")
SAMPLE_FIELDS: list[tuple[str, str]] = [
    ("latitude", "latitude"), ("longitude", "longitude"), ("speed_kmh", "gpsVelocity"),
    ("elevation_m", "gpsElevation"), ("accuracy_m", "gpsAccuracy"), ("heading_deg", "gpsHeading"),
    ("screen_locked", "screenLocked"), ("activity_value", "activityValue"), ("roll", "roll"),
    ("pitch", "pitch"), ("yaw", "yaw"), ("gyroscope_norm_var", "gyroscopeNormVar"),
]
SAMPLE_TS_FIELD = "gpsDate"
ROUTE_SOURCES = [SAMPLE_TS_FIELD] + [src for _, src in SAMPLE_FIELDS]  # the route arrays with a column

EVENT_ARRAYS = {"safetyEvents": "safety", "speedingEvents": "speeding", "callEvents": "call"}
EVENT_FIELDS: list[tuple[str, tuple[str, ...], str]] = [
    ("time_s", ("time",), "f64"), ("latitude", ("latitude",), "f64"), ("longitude", ("longitude",), "f64"),
    ("velocity_kmh", ("velocity",), "f64"), ("heading_deg", ("heading",), "f64"),
    ("elevation_m", ("elevation",), "f64"), ("distance_m", ("distance",), "f64"),
    ("type", ("type",), "f64"), ("level", ("level",), "f64"), ("value", ("value",), "f64"),
    ("duration_s", ("duration",), "f64"), ("sample_index", ("index",), "i64"),
]

CRASH_FIELDS: list[tuple[str, tuple[str, ...], str]] = [
    ("user_id", ("userId",), "str"),
    ("customer_id", ("customerId",), "str"),
    ("driver_id", ("driverId",), "str"),
    ("local_trip_id", ("parameters", "localTripId"), "str"),
    ("crash_date", ("parameters", "date"), "ts"),
    ("trip_start_date", ("parameters", "tripStartDate"), "ts"),
    ("gps_window_neg", ("parameters", "gpsWindowNeg"), "f64"),
    ("gps_window_pos", ("parameters", "gpsWindowPos"), "f64"),
    ("imu_window_neg", ("parameters", "imuWindowNeg"), "f64"),
    ("imu_window_pos", ("parameters", "imuWindowPos"), "f64"),
    ("imu_frequency", ("parameters", "imuFrequency"), "f64"),
    ("probability", ("probability",), "f64"),
    ("status", ("status",), "str"),
    ("latitude", ("latitude",), "f64"),
    ("longitude", ("longitude",), "f64"),
    ("velocity_kmh", ("velocity",), "f64"),
]

DIAGNOSIS_FIELDS: list[tuple[str, tuple[str, ...], str]] = [
    ("phone_model", ("smartphoneData", "phoneModel"), "str"),
    ("app_build_number", ("smartphoneData", "appBuildNumber"), "str"),
    ("app_version", ("smartphoneData", "appVersion"), "str"),
    ("os_type", ("smartphoneData", "osType"), "str"),
    ("os_version", ("smartphoneData", "osVersion"), "str"),
    ("sdk_version", ("smartphoneData", "sdkVersion"), "str"),
]

DELETION_FIELDS: list[tuple[str, tuple[str, ...], str]] = [
    ("event", ("event",), "str"),
    ("event_date", ("date",), "ts"),
]


def _fields(spec):
    return [(name, TYPES[t]) for name, _, t in spec]


SCHEMAS: dict[str, pa.Schema] = {
    "trips": pa.schema(COMMON + [("itin_id", pa.string())] + _fields(TRIP_FIELDS)
                       + [("n_samples", pa.int64()), ("extra", pa.string())]),
    "trip_samples": pa.schema(COMMON + [("itin_id", pa.string()), ("seq", pa.int32()), ("ts", TS)]
                              + [(c, pa.float64()) for c, _ in SAMPLE_FIELDS]),
    "trip_events": pa.schema(COMMON + [("itin_id", pa.string()), ("event_type", pa.string()), ("seq", pa.int32())]
                             + _fields(EVENT_FIELDS) + [("extra", pa.string())]),
    "crashes": pa.schema(COMMON + [("crash_id", pa.string())] + _fields(CRASH_FIELDS) + [("extra", pa.string())]),
    "diagnoses": pa.schema(COMMON + [("user_id", pa.string()), ("body_sha256", pa.string())]
                           + _fields(DIAGNOSIS_FIELDS) + [("n_events", pa.int64()), ("events", pa.string()),
                                                          ("extra", pa.string())]),
    "trip_deletions": pa.schema(COMMON + [("itin_id", pa.string())] + _fields(DELETION_FIELDS)
                                + [("extra", pa.string())]),
}

TABLES = tuple(SCHEMAS)


def _file_schema(s: pa.Schema) -> pa.Schema:
    return s.set(s.get_field_index("date"), pa.field("date", pa.string()))


# What the Parquet files hold: the same columns, with ``date`` as its partition directory's text
# (``date=2025-03-30``). pyarrow datasets type path keys as strings and refuse a file column of the
# same name with another type (pandas' default, dictionary-typed keys, still needs a partitioning
# argument); DuckDB and Spark give the path's value as a DATE, as the views do; Polars keeps the
# file's text unless given a hive schema (docs/reading.md). Iceberg's identity partitions need the
# column inside the files.
FILE_SCHEMAS = {name: _file_schema(s) for name, s in SCHEMAS.items()}
TRIP_TABLES = ("trips", "trip_samples", "trip_events")


def markdown() -> str:
    """docs/tables.md, generated from the schemas (a test keeps the file in step)."""
    sources = {"trips": {c: ".".join(p) for c, p, _ in TRIP_FIELDS},
               "trip_samples": {c: f"route.{s}" for c, s in SAMPLE_FIELDS} | {"ts": "route.gpsDate"},
               "trip_events": {c: ".".join(p) for c, p, _ in EVENT_FIELDS},
               "crashes": {c: ".".join(p) for c, p, _ in CRASH_FIELDS} | {"crash_id": "crashId"},
               "diagnoses": {c: ".".join(p) for c, p, _ in DIAGNOSIS_FIELDS} | {"user_id": "userId"},
               "trip_deletions": {c: ".".join(p) for c, p, _ in DELETION_FIELDS}}
    sources["trips"]["itin_id"] = "itinId"
    sources["trip_deletions"]["itin_id"] = "itinId"
    out = ["# Lake tables", "",
           "Generated by `python -m lake.schema` from `lake/schema.py`. The live files are under",
           "`data/lake/<table>/team=<team>/date=<YYYY-MM-DD>/`, readable by any hive-partitioned Parquet",
           "reader (docs/reading.md). In the files, `team_id` and `date` are also columns (`date` as text;",
           "the views give it as a DATE, the type below).",
           "`log_part`/`log_offset` point at the log record a row came from; `extra` holds every field",
           "of the pushed object that has no column (JSON).", ""]
    for name, schema in SCHEMAS.items():
        out += [f"## {name}", "", "| column | type | from |", "|---|---|---|"]
        for f in schema:
            out.append(f"| {f.name} | {f.type} | {sources[name].get(f.name, '')} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown(), end="")
