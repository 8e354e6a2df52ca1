"""Personal data: find it in a text and replace it with a typed placeholder, before anything keeps it.

One `Redactor` serves every door a text comes in by: ingest (before validation, de-duplication,
snapshots and quarantine), the service's /classify (so the model sees what it was trained on) and
/feedback (before anything is written). The rules (which entities, redact or quarantine) are plain
data (`PrivacyRules`), filled from registry/policy.yaml by the steps.
"""
