"""petcohort.storage"""
