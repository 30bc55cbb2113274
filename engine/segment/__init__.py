"""petcohort.engine.segment"""
