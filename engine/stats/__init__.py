"""petcohort.engine.stats"""
