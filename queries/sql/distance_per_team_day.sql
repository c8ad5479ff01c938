-- Distance driven and trip count per team and day.
SELECT team_id,
       date,
       count(*)                          AS trips,
       count(DISTINCT user_id)           AS drivers,
       round(sum(distance_m) / 1000, 1)  AS distance_km,
       round(sum(duration_s) / 3600, 2)  AS hours
FROM trips
GROUP BY ALL
ORDER BY team_id, date;
