-- 0003a_operations downgrade: the purge and the check go; the cache table is archived
-- (or dropped when empty) by reserve.schema.migration.archive_table.
DROP FUNCTION public.purge_booking_confirmation_results(timestamptz, integer, boolean);
ALTER TABLE public.feature_flag_overrides DROP CONSTRAINT feature_flag_overrides_adjacency_mode_check;
