-- Average scores and distance per driver and month (trips dated by their start).
SELECT team_id,
       user_id,
       date_trunc('month', start_date)::DATE AS month,
       count(*)                               AS trips,
       round(sum(distance_m) / 1000, 1)       AS distance_km,
       round(avg(eco_driving_score), 2)       AS eco_driving,
       round(avg(safety_score), 2)            AS safety,
       round(avg(distraction_score), 2)       AS distraction,
       round(avg(speeding_score), 2)          AS speeding
FROM trips
GROUP BY ALL
ORDER BY team_id, user_id, month;
