-- Every TRIP_DELETION received: when DriveQuant says it happened and when we received it.
SELECT team_id, itin_id, event, event_date, received_at, log_part, log_offset
FROM trip_deletions
ORDER BY received_at DESC;
