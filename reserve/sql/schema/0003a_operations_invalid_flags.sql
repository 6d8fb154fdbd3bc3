-- The feature flag overrides that 0003a_operations' check would refuse: id and value of each.
SELECT id::text || ' (' || quote_literal(flag_value) || ')'
FROM public.feature_flag_overrides
WHERE flag_key = 'allocator.adjacency_mode' AND flag_value NOT IN ('connected', 'pairwise', 'neighbors')
ORDER BY id
