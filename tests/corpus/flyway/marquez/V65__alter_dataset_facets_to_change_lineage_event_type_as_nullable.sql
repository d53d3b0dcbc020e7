ALTER TABLE dataset_facets ALTER COLUMN lineage_event_type DROP NOT NULL;
