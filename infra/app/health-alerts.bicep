// Alerts on the detector's own health, as Sentinel's SentinelHealth does for its rules: scheduled log
// queries over the `detector.summary {...}` traces the function writes to Application Insights after
// every run (function_app.py, detector/runner.py RunSummary.to_json). The KQL lives in infra/health/*.kql,
// which tests/test_infra.py runs (duckdb-kql) over traces made from real run summaries.

@description('Region of the alert rules (the Application Insights component\'s).')
param location string

@description('Tags for the alert rules and the action group.')
param tags object = {}

@description('Name of the Application Insights component the function writes its traces to.')
param applicationInsightsName string

@description('Prefix of the alert rule and action group names.')
param namePrefix string

@description('How often the detector runs (KQL timespan): the rules\' queryFrequency. No successful run for longer than this plus an hour alerts. At most 47h (log alerts look back 2 days).')
param runInterval string = '1d'

@description('A rule window (KQL timespan, the rules\' queryPeriod): a checkpoint lag above two of them alerts.')
param ruleWindow string = '1d'

@description('E-mail address that receives the alerts; empty: the alerts fire (visible in Azure Monitor) but notify nobody.')
param alertEmail string = ''

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: '${namePrefix}-health'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'detector'
    enabled: true
    emailReceivers: [
      {
        name: 'detector-operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}


var alerts = [
  {
    name: 'no-successful-run'
    displayName: 'IIS detector: no successful run'
    description: 'No detector run succeeded for longer than the run interval plus an hour (or no run at all).'
    severity: 1
    query: replace(loadTextContent('../health/no-successful-run.kql'), 'let runInterval = 1d;', 'let runInterval = ${runInterval};')
    evaluationFrequency: 'PT1H'
    windowSize: 'P2D'
  }
  {
    name: 'checkpoint-lag'
    displayName: 'IIS detector: checkpoint lag above two windows'
    description: 'A rule\'s checkpoint is more than two windows behind: the detector runs but does not keep up.'
    severity: 2
    query: replace(loadTextContent('../health/checkpoint-lag.kql'), 'let maxLagSeconds = 172800;', 'let maxLagSeconds = 2 * (${ruleWindow} / 1s);')
    evaluationFrequency: 'PT1H'
    windowSize: 'P2D'
  }
  {
    name: 'input-problems'
    displayName: 'IIS detector: skipped input lines or parked findings'
    description: 'A run skipped input lines or parked findings: something was not evaluated or not delivered.'
    severity: 2
    query: loadTextContent('../health/input-problems.kql')
    evaluationFrequency: 'PT1H'
    windowSize: 'PT1H'
  }
  {
    name: 'delivery-errors'
    displayName: 'IIS detector: delivery or run errors'
    description: 'A run could not deliver findings to a sink, or could not read a source or the state.'
    severity: 1
    query: loadTextContent('../health/delivery-errors.kql')
    evaluationFrequency: 'PT1H'
    windowSize: 'PT1H'
  }
]

resource healthAlerts 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [
  for alert in alerts: {
    name: '${namePrefix}-${alert.name}'
    location: location
    tags: tags
    kind: 'LogAlert'
    properties: {
      displayName: alert.displayName
      description: alert.description
      severity: alert.severity
      enabled: true
      scopes: [
        applicationInsights.id
      ]
      evaluationFrequency: alert.evaluationFrequency
      windowSize: alert.windowSize
      criteria: {
        allOf: [
          {
            query: alert.query
            timeAggregation: 'Count'
            operator: 'GreaterThan'
            threshold: 0
            failingPeriods: {
              numberOfEvaluationPeriods: 1
              minFailingPeriodsToAlert: 1
            }
          }
        ]
      }
      autoMitigate: false
      actions: {
        actionGroups: empty(alertEmail) ? [] : [actionGroup.id]
      }
    }
  }
]

output alertNames array = [for (alert, i) in alerts: healthAlerts[i].name]
