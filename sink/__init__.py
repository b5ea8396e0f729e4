"""The sink stage: position-guarded, exactly-once upserts into TerraFusion's PostgreSQL."""
