// Resources of the `loganalytics-table` sink, deployed into the resource group of the EXISTING workspace:
// the custom table IISPortScanFindings_CL, a data collection rule of kind Direct (it carries its own
// logs-ingestion endpoint, so no data collection endpoint is needed) whose stream declaration is the
// same column list as the table, and, optionally, one Microsoft Sentinel scheduled rule per detector rule.
// The column list comes from infra/schema/findings-columns.json, the contract with the sink's code.

@description('Name of the existing Log Analytics workspace (in this resource group).')
param workspaceName string

@description('Region of the data collection rule: the workspace\'s region.')
param location string

@description('Tags for the data collection rule.')
param tags object = {}

@description('Name of the custom table; custom tables end in _CL.')
param tableName string

@description('Stream the sink posts to (DETECTOR_INGESTION_STREAM); must start with Custom-.')
param streamName string

@description('Columns of the table and of the stream declaration: [{name, type}], TimeGenerated included.')
param columns array

@description('Name of the data collection rule.')
param dataCollectionRuleName string

@description('Days the findings are kept in the table (interactive retention).')
@minValue(4)
@maxValue(730)
param retentionInDays int = 90

@description('Create the Microsoft Sentinel scheduled rules that raise an alert (and incident) per new finding. Needs Sentinel on the workspace.')
param enableAlertRule bool = false

@description('The alert rules, one per detector rule (infra/schema/findings-alert-rules.json `rules`).')
param alertRules array = []

@description('How often the Sentinel rules run (ISO 8601 duration, PT5M to P14D).')
param alertRuleFrequency string = 'PT5M'

@description('How far back the Sentinel rules look (ISO 8601 duration, at least the frequency).')
param alertRulePeriod string = 'P1D'

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: workspaceName
}

resource findingsTable 'Microsoft.OperationalInsights/workspaces/tables@2022-10-01' = {
  parent: workspace
  name: tableName
  properties: {
    plan: 'Analytics'
    retentionInDays: retentionInDays
    schema: {
      name: tableName
      columns: columns
    }
  }
}

resource dataCollectionRule 'Microsoft.Insights/dataCollectionRules@2023-03-11' = {
  name: dataCollectionRuleName
  location: location
  tags: tags
  kind: 'Direct'
  properties: {
    description: 'Findings of the serverless IIS port-scan detector, posted through the Logs Ingestion API.'
    streamDeclarations: {
      '${streamName}': {
        columns: columns
      }
    }
    destinations: {
      logAnalytics: [
        {
          name: 'findingsWorkspace'
          workspaceResourceId: workspace.id
        }
      ]
    }
    dataFlows: [
      {
        streams: [
          streamName
        ]
        destinations: [
          'findingsWorkspace'
        ]
        transformKql: 'source' // the stream already has the table's columns
        outputStream: streamName
      }
    ]
  }
  dependsOn: [
    findingsTable
  ]
}

// One scheduled rule per detector rule: tactics, techniques and entity mappings are fixed properties of a
// Sentinel rule, and they differ between the detector's rules (docs/sinks.md).
resource alertRule 'Microsoft.SecurityInsights/alertRules@2024-09-01' = [
  for rule in (enableAlertRule ? alertRules : []): {
    scope: workspace
    name: guid(workspace.id, tableName, rule.ruleId)
    kind: 'Scheduled'
    properties: {
      displayName: rule.displayName
      description: rule.description
      enabled: true
      severity: rule.severity
      query: rule.query
      queryFrequency: alertRuleFrequency
      queryPeriod: alertRulePeriod
      triggerOperator: 'GreaterThan'
      triggerThreshold: 0
      suppressionEnabled: false
      suppressionDuration: 'PT1H'
      tactics: rule.tactics
      techniques: rule.techniques
      eventGroupingSettings: {
        aggregationKind: 'AlertPerResult'
      }
      // The point of these rules: real alerts with entities, which the incidents API cannot attach.
      entityMappings: rule.entityMappings
      customDetails: rule.customDetails
      alertDetailsOverride: rule.alertDetailsOverride
      // A finding delivered twice (the ingestion API does not de-duplicate) folds into one incident.
      incidentConfiguration: {
        createIncident: true
        groupingConfiguration: {
          enabled: true
          reopenClosedIncident: false
          lookbackDuration: 'P7D'
          matchingMethod: 'Selected'
          groupByEntities: []
          groupByAlertDetails: []
          groupByCustomDetails: [
            'FindingId'
          ]
        }
      }
    }
    dependsOn: [
      findingsTable
    ]
  }
]

output tableName string = findingsTable.name
output dataCollectionRuleName string = dataCollectionRule.name
output dataCollectionRuleId string = dataCollectionRule.id
output immutableId string = dataCollectionRule.properties.immutableId
output logsIngestionEndpoint string = dataCollectionRule.properties.endpoints.logsIngestion
