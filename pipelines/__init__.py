"""petcohort.pipelines"""
