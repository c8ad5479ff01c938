-- Crashes with where and how fast, most recent first.
SELECT team_id, crash_id, crash_date, user_id, status, probability,
       latitude, longitude, velocity_kmh, local_trip_id
FROM crashes
ORDER BY crash_date DESC NULLS LAST;
