"""``pacbound verify``'s engine: a report's certificate re-derived through its method's own
certify phase (:mod:`pacbound.verify.engine`), the recorded inputs loaded back
(:mod:`pacbound.verify.recorded`), and the field-by-field comparison
(:mod:`pacbound.verify.fields`)."""
