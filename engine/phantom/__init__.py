"""petcohort.engine.phantom"""
