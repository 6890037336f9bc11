-- A process's use against its container's requests as well as its limits: CPU as a share of
-- the CPU request, resident memory as a share of the memory request and of the memory limit
-- (the CPU limit share is `cpu_limit_percent`). NULL where the container sets no such request
-- or limit, and in rows written before this migration.
ALTER TABLE vm_process_metrics
    ADD COLUMN cpu_request_percent    real,
    ADD COLUMN memory_limit_percent   real,
    ADD COLUMN memory_request_percent real;
